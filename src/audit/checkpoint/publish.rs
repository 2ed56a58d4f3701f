//! Writing checkpoints: every interval when the head moved, and once more at
//! a graceful shutdown. Each goes to `<audit>.checkpoints` (appended, one
//! line) and, when configured, to a webhook — best effort, retried, never on
//! a call's path.
//!
//! Before signing a new head the publisher checks that the history it signed
//! last is still there: the row at the last checkpoint's `seq` with its
//! `hash`, and an intact chain from there to the new head. If not, it signs
//! nothing (a signature would vouch for the rewritten history), logs an
//! error and counts the refusal ([`Audit::checkpoint_refused`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Checkpoint, Signer};
use crate::audit::Audit;

/// Attempts per checkpoint at the webhook, and the first pause between them
/// (doubled after each failure: 1, 2, 4, 8 s).
const WEBHOOK_ATTEMPTS: u32 = 5;
const WEBHOOK_FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Checkpoints waiting for the webhook; more are only in the file.
const WEBHOOK_QUEUE: usize = 64;
/// How long a shutdown waits for the webhook to take the last checkpoint.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// At most one error line per this long about refused checkpoints.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(300);
/// How much of the end of the checkpoints file is read at start for its last line.
const TAIL_BYTES: u64 = 64 * 1024;

/// Signs and ships checkpoints for one audit store. Cheap to clone.
#[derive(Clone)]
pub struct Publisher(Arc<Inner>);

struct Inner {
    audit: Audit,
    signer: Signer,
    file: PathBuf,
    /// The head last signed and written (also read back from the file at
    /// start), so an idle store does not add a line a minute and a rewrite
    /// is caught. Held through a whole checkpoint, so two never overlap.
    last: tokio::sync::Mutex<Option<(i64, String)>>,
    /// When a refusal was last logged, and refusals since not logged.
    refusal_log: Mutex<(Option<Instant>, u64)>,
    webhook: Mutex<Option<mpsc::Sender<String>>>,
    webhook_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Publisher {
    /// Must run inside a tokio runtime when `webhook_url` is set (it starts
    /// the delivery task).
    pub fn new(
        audit: Audit,
        signer: Signer,
        file: PathBuf,
        webhook_url: Option<String>,
    ) -> Publisher {
        let last = last_line(&file).map(|c| (c.seq, c.hash));
        let (webhook, webhook_task) = match webhook_url {
            Some(url) => {
                let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
                (Some(tx), Some(tokio::spawn(deliver(url, rx))))
            }
            None => (None, None),
        };
        Publisher(Arc::new(Inner {
            audit,
            signer,
            file,
            last: tokio::sync::Mutex::new(last),
            refusal_log: Mutex::new((None, 0)),
            webhook: Mutex::new(webhook),
            webhook_task: Mutex::new(webhook_task),
        }))
    }

    pub fn public_key(&self) -> &str {
        self.0.signer.public_key()
    }

    pub fn file(&self) -> &std::path::Path {
        &self.0.file
    }

    /// Signs the head if it moved since the last checkpoint and the history
    /// signed then is intact; returns the checkpoint once it is written.
    pub async fn checkpoint(&self) -> Option<Checkpoint> {
        let mut last = self.0.last.lock().await;
        let since = last.clone();
        let checked = self
            .0
            .audit
            .read(move |db| {
                let Some(head) = super::head(db)? else {
                    return Ok(Ok(None));
                };
                if since.as_ref() == Some(&head) {
                    return Ok(Ok(None));
                }
                Ok(match &since {
                    Some((seq, hash)) => {
                        crate::audit::verify_since(db, (*seq, hash), head.0).map(|_| Some(head))
                    }
                    None => Ok(Some(head)),
                })
            })
            .await;
        let head = match checked {
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) => return None,
            Ok(Err(problem)) => {
                self.refuse(problem);
                return None;
            }
            Err(e) => {
                tracing::warn!("audit checkpoint skipped: cannot read the store: {e}");
                return None;
            }
        };
        let checkpoint = match self
            .0
            .signer
            .sign(head.0, &head.1, &crate::audit::now_rfc3339())
        {
            Ok(checkpoint) => checkpoint,
            Err(e) => {
                self.refuse(format!("row {}: {e}", head.0));
                return None;
            }
        };
        let line = serde_json::to_string(&checkpoint).expect("a checkpoint serialises");
        let file = self.0.file.clone();
        let text = line.clone();
        let written = tokio::task::spawn_blocking(move || append_line(&file, &text)).await;
        let webhook = self.0.webhook.lock().expect("lock").clone();
        if let Some(tx) = webhook
            && tx.try_send(line).is_err()
        {
            tracing::warn!("audit checkpoint webhook is behind: a checkpoint was not sent");
        }
        match written {
            Ok(Ok(())) => {
                *last = Some(head);
                Some(checkpoint)
            }
            // `last` stays: the next interval signs the head again.
            Ok(Err(e)) => {
                tracing::error!(
                    "cannot append the audit checkpoint to {}: {e}",
                    self.0.file.display()
                );
                None
            }
            Err(e) => {
                tracing::error!("audit checkpoint writer failed: {e}");
                None
            }
        }
    }

    /// Counts a refusal, shows it on `/healthz`, and logs it (at most once
    /// per [`REFUSAL_LOG_EVERY`]).
    fn refuse(&self, problem: String) {
        let message = format!(
            "audit checkpoint refused: {problem}; the history signed in {} was changed, so the new head is not signed — investigate, and keep the store and checkpoints as evidence",
            self.0.file.display()
        );
        self.0.audit.checkpoint_refused(problem);
        let mut log = self.0.refusal_log.lock().expect("lock");
        let due = log.0.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY);
        if due {
            let unlogged = std::mem::take(&mut log.1);
            if unlogged > 0 {
                tracing::error!("{message} ({unlogged} more refusal(s) since the last message)");
            } else {
                tracing::error!("{message}");
            }
            log.0 = Some(Instant::now());
        } else {
            log.1 += 1;
        }
    }

    /// Checkpoints every `interval` until `shutdown`; the final checkpoint
    /// is [`Publisher::finish`]'s.
    pub fn spawn(&self, interval: Duration, shutdown: CancellationToken) {
        let publisher = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.cancelled() => return,
                }
                publisher.checkpoint().await;
            }
        });
    }

    /// At a graceful shutdown, after the last rows are written: one more
    /// checkpoint, and a bounded wait for the webhook to take it.
    pub async fn finish(&self) {
        self.checkpoint().await;
        self.0.webhook.lock().expect("lock").take();
        let task = self.0.webhook_task.lock().expect("lock").take();
        if let Some(task) = task
            && tokio::time::timeout(SHUTDOWN_WAIT, task).await.is_err()
        {
            tracing::warn!("audit checkpoint webhook: gave up waiting at shutdown");
        }
    }
}

/// Appends one line in a single write (O_APPEND: lines from several
/// gateways sharing a store do not interleave) and syncs it.
fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    file.write_all(format!("{line}\n").as_bytes())?;
    file.sync_data()
}

/// The last checkpoint in `path`, if it has one (reading only its end).
fn last_line(path: &std::path::Path) -> Option<Checkpoint> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    match serde_json::from_str(line) {
        Ok(checkpoint) => Some(checkpoint),
        Err(e) => {
            tracing::warn!(
                "the last line of {} is not a checkpoint ({e}); the next checkpoint does not check the history against it",
                path.display()
            );
            None
        }
    }
}

/// POSTs each checkpoint (the JSON line) to the webhook, retrying with
/// backoff; gives up on one after [`WEBHOOK_ATTEMPTS`] and goes on.
async fn deliver(url: String, mut rx: mpsc::Receiver<String>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!("audit checkpoint webhook disabled: {e}");
            return;
        }
    };
    while let Some(line) = rx.recv().await {
        let mut backoff = WEBHOOK_FIRST_BACKOFF;
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            let sent = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(line.clone())
                .send()
                .await;
            let problem = match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("HTTP {}", r.status())),
                // Never log the URL: it may carry a secret.
                Err(e) => Some(e.without_url().to_string()),
            };
            let Some(problem) = problem else { break };
            if attempt == WEBHOOK_ATTEMPTS {
                tracing::warn!(
                    "audit checkpoint webhook: giving up on a checkpoint after {attempt} attempts ({problem})"
                );
            } else {
                tracing::debug!("audit checkpoint webhook: attempt {attempt} failed ({problem})");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
}
