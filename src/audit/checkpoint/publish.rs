//! Writing checkpoints: every interval when the head moved, and once more at
//! a graceful shutdown. Each goes to `<audit>.checkpoints` (appended, one
//! line) and, when configured, to a webhook — best effort, retried, never on
//! a call's path.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Signs and ships checkpoints for one audit store. Cheap to clone.
#[derive(Clone)]
pub struct Publisher(Arc<Inner>);

struct Inner {
    audit: Audit,
    signer: Signer,
    file: PathBuf,
    /// The head last signed (also read back from the file at start), so an
    /// idle store does not add a line a minute.
    last: Mutex<Option<(i64, String)>>,
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
            last: Mutex::new(last),
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

    /// Signs the head if it moved since the last checkpoint; returns it.
    pub async fn checkpoint(&self) -> Option<Checkpoint> {
        let head = match self.0.audit.read(|db| super::head(db)).await {
            Ok(Some(head)) => head,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("audit checkpoint skipped: cannot read the head: {e}");
                return None;
            }
        };
        if self.0.last.lock().expect("lock").as_ref() == Some(&head) {
            return None;
        }
        let checkpoint = self
            .0
            .signer
            .sign(head.0, &head.1, &crate::audit::now_rfc3339());
        let line = serde_json::to_string(&checkpoint).expect("a checkpoint serialises");
        let file = self.0.file.clone();
        let text = line.clone();
        let written = tokio::task::spawn_blocking(move || append_line(&file, &text)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(
                "cannot append the audit checkpoint to {}: {e}",
                self.0.file.display()
            ),
            Err(e) => tracing::error!("audit checkpoint writer failed: {e}"),
        }
        *self.0.last.lock().expect("lock") = Some(head);
        let webhook = self.0.webhook.lock().expect("lock").clone();
        if let Some(tx) = webhook
            && tx.try_send(line).is_err()
        {
            tracing::warn!("audit checkpoint webhook is behind: a checkpoint was not sent");
        }
        Some(checkpoint)
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

/// The last checkpoint in `path`, if it has one.
fn last_line(path: &std::path::Path) -> Option<Checkpoint> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
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
