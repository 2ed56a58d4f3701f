//! Processes under test: starting them, waiting until they listen, reading
//! their CPU time and memory from /proc, and ending them (by their own
//! process group, which this driver created).

use std::collections::HashMap;
use std::io::{self, BufRead};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::client::bad;

/// Clock ticks per second of /proc/PID/stat times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// A started process group.
pub struct Proc {
    pub name: String,
    child: Child,
    pub pid: u32,
    /// The HTTP address it listens on, when it does.
    pub addr: Option<SocketAddr>,
}

/// A free loopback port (for programs that cannot listen on port 0 and say where).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Proc {
    /// Starts `command`; stdout is piped when `announce` is set (the first
    /// line names the address), stderr goes to `log`.
    pub fn start(
        name: &str,
        command: &mut Command,
        log: &Path,
        announce: Option<&str>,
    ) -> io::Result<Proc> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(log)?;
        command
            .stdin(Stdio::null())
            .stderr(log.try_clone()?)
            .process_group(0);
        if announce.is_some() {
            command.stdout(Stdio::piped());
        } else {
            command.stdout(log);
        }
        let child = command
            .spawn()
            .map_err(|e| bad(format!("cannot start {name} ({command:?}): {e}")))?;
        let pid = child.id();
        let mut proc = Proc {
            name: name.to_owned(),
            child,
            pid,
            addr: None,
        };
        if let Some(prefix) = announce {
            let stdout = proc.child.stdout.take().ok_or_else(|| bad("no stdout"))?;
            let (tx, rx) = std::sync::mpsc::channel();
            let prefix = prefix.to_owned();
            // Reads the announcement, then keeps draining stdout so the process never blocks on it.
            std::thread::spawn(move || {
                let mut sent = false;
                for line in io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if !sent && let Some(rest) = line.strip_prefix(&prefix) {
                        let _ = tx.send(
                            // `127.0.0.1:PORT`, without a path (`…/mcp`).
                            rest.trim()
                                .trim_start_matches("http://")
                                .split('/')
                                .next()
                                .unwrap_or_default()
                                .to_owned(),
                        );
                        sent = true;
                    }
                }
            });
            let addr = rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| bad(format!("{name} did not announce its address")))?;
            proc.addr = Some(
                addr.parse()
                    .map_err(|_| bad(format!("{name}: bad address {addr}")))?,
            );
        }
        Ok(proc)
    }

    /// Waits until `addr` accepts connections (for programs that do not announce).
    pub fn wait_listening(&mut self, addr: SocketAddr, limit: Duration) -> io::Result<()> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(bad(format!("{} exited early ({status})", self.name)));
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                self.addr = Some(addr);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(bad(format!(
            "{} is not listening on {addr} after {limit:?}",
            self.name
        )))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the process listens")
    }

    /// SIGTERM to the main process, then waits up to `grace` for it to exit.
    /// Returns whether it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.kill_group();
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_group();
        false
    }

    fn kill_group(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate(Duration::from_secs(5));
        } else {
            // The leader is gone; end whatever it left in its group.
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }
}

/// Resident memory of one process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Stat {
    comm: String,
    ppid: u32,
    ticks: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat {
        comm,
        ppid,
        ticks: utime + stime,
    })
}

/// CPU seconds used so far by a process tree, split into the upstream echo
/// servers (by name) and everything else (the proxy).
#[derive(Clone, Copy, Default, Debug)]
pub struct TreeCpu {
    pub proxy: f64,
    pub upstream: f64,
}

pub fn tree_cpu(root: u32) -> TreeCpu {
    let mut all: HashMap<u32, Stat> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                && let Some(s) = stat(pid)
            {
                all.insert(pid, s);
            }
        }
    }
    let mut out = TreeCpu::default();
    for (&pid, s) in &all {
        // Walk up to the root (bounded: the tree is shallow).
        let mut cur = pid;
        let mut inside = false;
        for _ in 0..16 {
            if cur == root {
                inside = true;
                break;
            }
            match all.get(&cur) {
                Some(p) if p.ppid > 1 => cur = p.ppid,
                _ => break,
            }
        }
        if inside {
            let secs = s.ticks as f64 / TICKS;
            if s.comm.starts_with("echo_server") {
                out.upstream += secs;
            } else {
                out.proxy += secs;
            }
        }
    }
    out
}

/// CPU seconds used so far by this driver.
pub fn self_cpu() -> f64 {
    stat(std::process::id())
        .map(|s| s.ticks as f64 / TICKS)
        .unwrap_or(0.0)
}
