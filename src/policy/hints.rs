//! Defaults from tool annotations: the `annotations` key of a policy decides
//! tools that no rule names, from the hints their server declared in
//! `tools/list` (`readOnlyHint`, `destructiveHint`, `idempotentHint`,
//! `openWorldHint`).
//!
//! Hints are the server's own claims, so they never override a rule: they
//! only replace `default`. Only hints declared `true` count; the MCP
//! defaults for absent hints are not assumed.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::Deserialize;

use super::Action;

/// The annotation names a policy may map, as MCP spells them.
pub const HINTS: [&str; 4] = [
    "readOnlyHint",
    "destructiveHint",
    "idempotentHint",
    "openWorldHint",
];

/// The hints one tool declared (`annotations` of a `tools/list` entry).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Hints {
    #[serde(default)]
    pub read_only_hint: Option<bool>,
    #[serde(default)]
    pub destructive_hint: Option<bool>,
    #[serde(default)]
    pub idempotent_hint: Option<bool>,
    #[serde(default)]
    pub open_world_hint: Option<bool>,
}

impl Hints {
    /// Whether the hint named `name` (one of [`HINTS`]) is declared `true`.
    pub fn declares(&self, name: &str) -> bool {
        let value = match name {
            "readOnlyHint" => self.read_only_hint,
            "destructiveHint" => self.destructive_hint,
            "idempotentHint" => self.idempotent_hint,
            "openWorldHint" => self.open_world_hint,
            _ => None,
        };
        value == Some(true)
    }
}

/// The hints an upstream's `tools/list` declared, by tool name; kept per
/// upstream and refreshed by every `tools/list` answer Airlock relays.
#[derive(Default)]
pub struct ToolHints(RwLock<HashMap<String, Hints>>);

impl ToolHints {
    pub fn remember(&self, tool: &str, hints: Hints) {
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if map.get(tool) != Some(&hints) {
            map.insert(tool.to_owned(), hints);
        }
    }

    pub fn get(&self, tool: &str) -> Option<Hints> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(tool).copied()
    }
}

/// How restrictive an action is, to pick among several declared hints.
fn weight(action: Action) -> u8 {
    match action {
        Action::Allow => 0,
        Action::RequireApproval => 1,
        Action::Deny => 2,
    }
}

/// The most restrictive action among the mapped hints `hints` declares, and
/// the hint that chose it.
pub fn decide(map: &[(String, Action)], hints: &Hints) -> Option<(Action, &'static str)> {
    map.iter()
        .filter(|(name, _)| hints.declares(name))
        .max_by_key(|(_, action)| weight(*action))
        .and_then(|(name, action)| {
            HINTS
                .iter()
                .find(|h| **h == name.as_str())
                .map(|h| (*action, *h))
        })
}
