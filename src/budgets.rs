//! Rate-limit budgets shared by replicas through PostgreSQL (`[store] url`).
//!
//! A stateless-era agent can reach any replica, so its `rate_limit` budget
//! lives in the database: one row per (upstream, rule, agent) holding the
//! GCRA's theoretical arrival time (TAT), and one statement per call that
//! reads, decides and writes it (`INSERT … ON CONFLICT DO UPDATE …
//! RETURNING`). The row lock serializes replicas racing on one budget; the
//! database's clock (`now()`) is the only clock, so replicas' clock skew
//! cannot widen a budget.
//!
//! GCRA with `max` calls per `window`: the emission interval is `T = window
//! / max` and the burst tolerance `τ = window − T`. A call at `now` is
//! allowed when `max(TAT, now) − now ≤ τ`, and then moves the TAT to
//! `max(TAT, now) + T`; a refused call waits `max(TAT, now) − now − τ`. This
//! is what `governor` does for a single replica (a burst of `max`, then one
//! every `T`), so the answer is the same with one replica or many.
//!
//! Handshake-era sessions keep their in-memory budget: a session lives on
//! one replica (the load balancer routes on its id), so its budget is exact
//! without a round trip (docs/deploy.md).

use std::time::Duration;

use deadpool_postgres::Pool;

/// The table (created by the approvals store's migration 4).
pub const SCHEMA: &str = "
CREATE TABLE airlock_rate_budgets (
    upstream text NOT NULL,
    rule     text NOT NULL,
    subject  text NOT NULL,
    tat      timestamptz NOT NULL,
    allowed  boolean NOT NULL,
    PRIMARY KEY (upstream, rule, subject)
);
CREATE INDEX airlock_rate_budgets_tat ON airlock_rate_budgets (tat);
";

/// `$4` is `T` and `$5` is `τ`, both in seconds. `allowed` records whether
/// this call spent (the same condition decides the new TAT); a refused call
/// leaves the TAT as it was.
const TAKE: &str = "
INSERT INTO airlock_rate_budgets AS b (upstream, rule, subject, tat, allowed)
VALUES ($1, $2, $3, now() + make_interval(secs => $4::float8), true)
ON CONFLICT (upstream, rule, subject) DO UPDATE SET
    allowed = greatest(b.tat, now()) <= now() + make_interval(secs => $5::float8),
    tat = CASE
        WHEN greatest(b.tat, now()) <= now() + make_interval(secs => $5::float8)
        THEN greatest(b.tat, now()) + make_interval(secs => $4::float8)
        ELSE b.tat
    END
RETURNING allowed, extract(epoch FROM tat - now())::float8";

/// Rows whose TAT has passed hold a full budget: the same as no row.
const PURGE: &str = "DELETE FROM airlock_rate_budgets WHERE tat < now()";

/// How long a call waits for the database before it is refused.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// How often idle budgets are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// The budget store could not answer; the call is refused, never let
/// through unlimited.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BudgetUnavailable(String);

/// One budget: whose calls to which rule of which upstream.
pub struct Budget<'a> {
    pub upstream: &'a str,
    /// The rule's key as written in the policy.
    pub rule: &'a str,
    /// The agent: its session key (docs/protocol.md).
    pub subject: &'a str,
}

/// The rate-limit budgets in PostgreSQL; a cheap handle.
#[derive(Clone)]
pub struct SharedBudgets {
    pool: Pool,
}

impl SharedBudgets {
    /// On the approvals store's pool (its migrations created the table).
    pub fn new(pool: Pool) -> SharedBudgets {
        SharedBudgets { pool }
    }

    /// Takes one call from `budget` (`max` calls per `window`): `Ok(Ok(()))`
    /// when allowed, `Ok(Err(wait))` when refused (a call is free after
    /// `wait`), `Err` when the database did not answer within 2 s.
    pub async fn take(
        &self,
        budget: &Budget<'_>,
        max: u32,
        window: Duration,
    ) -> Result<Result<(), Duration>, BudgetUnavailable> {
        match tokio::time::timeout(ANSWER_WITHIN, self.take_now(budget, max, window)).await {
            Ok(answer) => answer,
            Err(_) => Err(BudgetUnavailable(format!(
                "PostgreSQL did not answer within {} s",
                ANSWER_WITHIN.as_secs()
            ))),
        }
    }

    async fn take_now(
        &self,
        budget: &Budget<'_>,
        max: u32,
        window: Duration,
    ) -> Result<Result<(), Duration>, BudgetUnavailable> {
        let unavailable = |e: &dyn std::fmt::Display| BudgetUnavailable(e.to_string());
        let (every, tolerance) = gcra(max, window);
        let client = self.pool.get().await.map_err(|e| unavailable(&e))?;
        let statement = client
            .prepare_cached(TAKE)
            .await
            .map_err(|e| unavailable(&e))?;
        let row = client
            .query_one(
                &statement,
                &[
                    &budget.upstream,
                    &budget.rule,
                    &budget.subject,
                    &every,
                    &tolerance,
                ],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let allowed: bool = row.get(0);
        let ahead: f64 = row.get(1);
        if allowed {
            return Ok(Ok(()));
        }
        let wait = (ahead - tolerance).max(0.0);
        Ok(Err(Duration::from_secs_f64(wait)))
    }

    /// Deletes the budgets that are full again; any replica may, any time.
    pub async fn purge(&self) -> Result<u64, BudgetUnavailable> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| BudgetUnavailable(e.to_string()))?;
        client
            .execute(PURGE, &[])
            .await
            .map_err(|e| BudgetUnavailable(e.to_string()))
    }

    /// Purges every minute until `stop`.
    pub async fn purge_until(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PURGE_EVERY) => {}
            }
            if let Err(e) = self.purge().await {
                tracing::warn!("idle rate-limit budgets not purged: {e}");
            }
        }
    }
}

/// `(T, τ)` in seconds: the emission interval and the burst tolerance of
/// `max` calls per `window` (the same quota as `policy::quota_for`).
fn gcra(max: u32, window: Duration) -> (f64, f64) {
    let max = f64::from(max.max(1));
    let every = window.as_secs_f64() / max;
    (every, every * (max - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_max_then_one_every_window_over_max() {
        let (every, tolerance) = gcra(3, Duration::from_secs(60));
        assert_eq!(every, 20.0);
        assert_eq!(tolerance, 40.0);
        assert_eq!(gcra(1, Duration::from_secs(10)), (10.0, 0.0));
    }
}
