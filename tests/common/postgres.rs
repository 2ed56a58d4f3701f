//! A throwaway PostgreSQL cluster from the system's binaries: `initdb` into a
//! temp dir, `pg_ctl start` on a free 127.0.0.1 port, `pg_ctl stop -m
//! immediate` and removal when dropped (also when a test panics).
//!
//! `initdb` refuses to run as root: as root the cluster is created and run
//! as the `postgres` user (`runuser -u postgres --`), with its directory
//! owned by that user.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    run_as: Option<String>,
    pub port: u16,
}

/// The directory holding `initdb` and `pg_ctl`: `AIRLOCK_PG_BIN`, else the
/// newest `/usr/lib/postgresql/*/bin`, else wherever `PATH` finds `initdb`.
fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("AIRLOCK_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgCluster {
    /// Starts a cluster, or returns None (after saying why) when the
    /// PostgreSQL binaries are not installed.
    pub fn start(name: &str) -> Option<PgCluster> {
        let Some(bin) = find_bin() else {
            eprintln!(
                "SKIPPED: PostgreSQL server binaries (initdb, pg_ctl) not found; \
                 run scripts/setup-test-env or set AIRLOCK_PG_BIN"
            );
            return None;
        };
        let root = is_root();
        let dir = std::env::temp_dir().join(format!("airlock-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        let run_as = root.then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .args(["-R", &format!("{user}:"), dir.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success(), "chown {dir:?} to {user}");
        }
        let mut cluster = PgCluster {
            bin,
            dir,
            run_as,
            port: 0,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.path("data"),
                "-U",
                "airlock",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        // A port taken between free_port() and start is retried.
        for _ in 0..5 {
            cluster.port = free_port();
            if cluster.pg_ctl_start() {
                return Some(cluster);
            }
        }
        let log = std::fs::read_to_string(cluster.dir.join("log")).unwrap_or_default();
        panic!("PostgreSQL did not start:\n{log}");
    }

    fn pg_ctl_start(&self) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.path("sock")
        );
        self.try_run(
            "pg_ctl",
            &[
                "-D",
                &self.path("data"),
                "-l",
                &self.path("log"),
                "-o",
                &options,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
    }

    /// Stops the server (an outage): its clients' connections break and new
    /// ones are refused until [`PgCluster::start_again`]. A fast shutdown,
    /// not an immediate one: with `synchronous_commit=off` an immediate one
    /// could lose the last commits, which no real outage of a durable
    /// server does.
    #[allow(dead_code)]
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.path("data"), "-m", "fast", "-w", "stop"],
        );
    }

    /// Starts a stopped server again, on the same port.
    #[allow(dead_code)]
    pub fn start_again(&self) {
        assert!(self.pg_ctl_start(), "PostgreSQL did not start again");
    }

    pub fn url(&self) -> String {
        format!("postgres://airlock@127.0.0.1:{}/postgres", self.port)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn try_run(&self, program: &str, args: &[&str]) -> bool {
        let out = self.command(program).args(args).output().unwrap();
        if !out.status.success() {
            eprintln!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }

    fn run(&self, program: &str, args: &[&str]) {
        assert!(self.try_run(program, args), "{program} failed");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.path("data");
        if Path::new(&data).join("postmaster.pid").exists() {
            let _ = self
                .command("pg_ctl")
                .args(["-D", &data, "-m", "immediate", "-w", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether this process runs as root (initdb would refuse).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
