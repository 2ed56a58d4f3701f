//! Calendar-window counters: PolicyLayer `limits` and Intercept `rate_limit`.
//!
//! A window is a UTC minute, hour or day: a counter allows `max` calls from
//! the start of the current window and resets when the next one starts (not
//! a sliding window, unlike Airlock's own `rate_limit`, which is GCRA).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whose calls a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One count per agent identity (PolicyLayer's `grant`, Intercept's process).
    Agent,
    /// One count per agent session.
    Session,
    /// One count for everyone.
    Global,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Scope> {
        Some(match text {
            "grant" | "agent" => Scope::Agent,
            "session" => Scope::Session,
            "global" => Scope::Global,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Agent => "agent",
            Scope::Session => "session",
            Scope::Global => "global",
        }
    }
}

/// Parses `minute`, `hour`, `day` (and their plurals) into seconds.
pub fn window_seconds(text: &str) -> Option<u64> {
    Some(match text.trim_end_matches('s') {
        "minute" | "min" => 60,
        "hour" => 3600,
        "day" => 86_400,
        _ => return None,
    })
}

/// A counter of calls per calendar window.
#[derive(Clone)]
pub struct WindowLimit {
    /// The counter's name: limits with the same name in one policy share it.
    pub counter: String,
    pub max: u32,
    /// Window length in seconds (60, 3600 or 86400), aligned to UTC.
    pub window: u64,
    pub scope: Scope,
    /// Scope key → (window number, calls counted in it).
    state: Arc<Mutex<HashMap<String, (u64, u32)>>>,
}

impl WindowLimit {
    pub fn new(counter: String, max: u32, window: u64, scope: Scope) -> WindowLimit {
        WindowLimit {
            counter,
            max,
            window,
            scope,
            state: Arc::default(),
        }
    }

    fn key<'k>(&self, agent: &'k str, session: &'k str) -> &'k str {
        match self.scope {
            Scope::Agent => agent,
            Scope::Session => session,
            Scope::Global => "",
        }
    }

    /// Counts one call, or says how long until the window resets.
    pub fn take(&self, agent: &str, session: &str) -> Result<(), Duration> {
        self.take_at(agent, session, now_secs())
    }

    fn take_at(&self, agent: &str, session: &str, now: f64) -> Result<(), Duration> {
        let number = (now / self.window as f64) as u64;
        let key = self.key(agent, session);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match state.get_mut(key) {
            Some(entry) => entry,
            None => state.entry(key.to_owned()).or_insert((number, 0)),
        };
        if entry.0 != number {
            *entry = (number, 0);
        }
        if entry.1 >= self.max {
            let ends = ((number + 1) * self.window) as f64;
            return Err(Duration::from_secs_f64((ends - now).max(0.0)));
        }
        entry.1 += 1;
        Ok(())
    }

    /// Drops counts of past windows (called by the reaper).
    pub fn forget_idle(&self) {
        let number = (now_secs() / self.window as f64) as u64;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.retain(|_, (n, _)| *n == number);
    }

    /// Shares `old`'s live counts when it counts the same thing.
    pub fn inherit(&mut self, old: &WindowLimit) {
        if self.counter == old.counter
            && self.max == old.max
            && self.window == old.window
            && self.scope == old.scope
        {
            self.state = old.state.clone();
        }
    }

    /// `30 calls per hour (UTC calendar hour, per agent)`.
    pub fn describe(&self) -> String {
        let window = match self.window {
            60 => "minute",
            3600 => "hour",
            _ => "day",
        };
        format!(
            "{} calls per {window} (UTC calendar {window}, per {}, counter `{}`)",
            self.max,
            self.scope.as_str(),
            self.counter
        )
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reset_at_the_calendar_boundary_and_say_when() {
        let limit = WindowLimit::new("c".into(), 2, 60, Scope::Agent);
        let t = 1_700_000_000.0 - 1_700_000_000.0 % 60.0 + 50.0; // 50 s into a minute
        assert!(limit.take_at("a", "s", t).is_ok());
        assert!(limit.take_at("a", "s", t + 1.0).is_ok());
        let wait = limit.take_at("a", "s", t + 2.0).unwrap_err();
        assert_eq!(wait.as_secs(), 8, "{wait:?}");
        assert!(
            limit.take_at("b", "s", t + 2.0).is_ok(),
            "another agent counts apart"
        );
        assert!(
            limit.take_at("a", "s", t + 10.0).is_ok(),
            "the next minute starts afresh"
        );
    }
}
