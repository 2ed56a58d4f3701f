//! Cost of one policy decision (`Policy::decide`) with 10, 100 and 1,000
//! rules, a quarter of them exact names and the rest globs of three shapes
//! (`prefix_*`, `*_suffix`, `a*b*c`), plus glob `hide` entries.
//!
//! `cargo bench --bench policy` (divan; each decision sample is 1,000 calls,
//! so the timer's precision does not show). Target (issue 7): ≤ 1 µs per
//! decision at 1,000 rules. `conditions_*`: the same rule shapes, each with
//! condition branches (issue 13), decided against a call's raw arguments,
//! parse included.

use airlock::policy::{Facts, Policy, Verdict, parse_str};
use divan::{Bencher, black_box};

fn main() {
    divan::main();
}

const SIZES: [usize; 3] = [10, 100, 1000];

/// A policy with `n` rules; tool names used below hit each kind of rule.
fn policy(n: usize) -> Policy {
    let mut rules = Vec::with_capacity(n);
    for i in 0..n {
        let (key, action) = match i % 4 {
            0 => (format!("tool_{i}"), "allow"),
            1 => (format!("svc{i}_*"), "allow"),
            2 => (format!("*_op{i}"), "deny"),
            _ => (format!("team{i}*write*"), "require_approval"),
        };
        rules.push(format!(
            r#""{key}":{{"action":"{action}","reason":"rule {i}"}}"#
        ));
    }
    let text = format!(
        r#"{{"version":"1","default":"deny","hide":["debug_*","*_internal"],"rules":{{{}}}}}"#,
        rules.join(",")
    );
    parse_str(&text, "bench.json").expect("the generated policy is valid")
}

/// A policy with `n` rules like [`policy`], each choosing its action by
/// conditions: a numeric bound, a regex and an `any` group over a fact.
fn conditional_policy(n: usize) -> Policy {
    let mut rules = Vec::with_capacity(n);
    for i in 0..n {
        let key = match i % 4 {
            0 => format!("tool_{i}"),
            1 => format!("svc{i}_*"),
            2 => format!("*_op{i}"),
            _ => format!("team{i}*write*"),
        };
        rules.push(format!(
            r#""{key}":{{"when":[
                {{"if":[{{"path":"args.amount","op":"gt","value":10000}}],"action":"deny","reason":"too large"}},
                {{"if":[{{"path":"args.path","op":"regex","value":"^/(etc|root)/"}}],"action":"deny"}},
                {{"if":[{{"any":[{{"path":"args.amount","op":"gte","value":100}},{{"path":"agent","op":"in","value":["intern","ci"]}}]}}],"action":"require_approval"}},
                {{"action":"allow"}}]}}"#
        ));
    }
    let text = format!(
        r#"{{"version":"1","default":"deny","hide":["debug_*","*_internal"],"rules":{{{}}}}}"#,
        rules.join(",")
    );
    parse_str(&text, "bench.json").expect("the generated policy is valid")
}

/// Match plus condition branches: the last-but-one branch decides, so every
/// condition is evaluated and the arguments are parsed once per call.
#[divan::bench(args = SIZES, sample_count = 200, sample_size = 1000)]
fn conditions_glob_hit(bencher: Bencher, n: usize) {
    let p = conditional_policy(n);
    let tool = format!("svc{}_refund", ((n / 2) & !3) + 1);
    let args = r#"{"amount":250,"path":"/tmp/x","note":"refund for order 17"}"#;
    bencher.bench_local(|| {
        let facts = Facts::new(black_box(&tool), Some(black_box(args)), "claude", "up", "s");
        match p.decide(facts.tool) {
            Verdict::Rule(rule) => Some(rule.choose(&facts).action),
            other => other.action(),
        }
    });
}

/// An exact rule (a hash lookup after the hide check).
#[divan::bench(args = SIZES, sample_count = 200, sample_size = 1000)]
fn exact_hit(bencher: Bencher, n: usize) {
    let p = policy(n);
    let tool = format!("tool_{}", (n / 2) & !3);
    bencher.bench_local(|| p.decide(black_box(&tool)).action());
}

/// A prefix glob in the middle of the rule list.
#[divan::bench(args = SIZES, sample_count = 200, sample_size = 1000)]
fn glob_prefix_hit(bencher: Bencher, n: usize) {
    let p = policy(n);
    let tool = format!("svc{}_read_file", ((n / 2) & !3) + 1);
    bencher.bench_local(|| p.decide(black_box(&tool)).action());
}

/// A suffix glob near the end of the rule list.
#[divan::bench(args = SIZES, sample_count = 200, sample_size = 1000)]
fn glob_suffix_hit(bencher: Bencher, n: usize) {
    let p = policy(n);
    let tool = format!("customer_op{}", ((n - 3) & !3) + 2);
    bencher.bench_local(|| p.decide(black_box(&tool)).action());
}

/// A multi-wildcard glob (`team{i}*write*`).
#[divan::bench(args = SIZES, sample_count = 200, sample_size = 1000)]
fn glob_multi_hit(bencher: Bencher, n: usize) {
    let p = policy(n);
    let tool = format!("team{}_db_write_rows", ((n / 2) & !3) + 3);
    bencher.bench_local(|| p.decide(black_box(&tool)).action());
}

/// No rule matches: every glob is tried, then the default applies.
#[divan::bench(args = SIZES, sample_count = 200, sample_size = 1000)]
fn miss_to_default(bencher: Bencher, n: usize) {
    let p = policy(n);
    bencher.bench_local(|| p.decide(black_box("unrelated_tool_name")).action());
}

/// A hidden tool (glob in `hide`).
#[divan::bench(args = SIZES, sample_count = 200, sample_size = 1000)]
fn hidden(bencher: Bencher, n: usize) {
    let p = policy(n);
    bencher.bench_local(|| p.decide(black_box("debug_dump_memory")).action());
}

/// Compiling the whole policy (done once per load or reload, not per call).
#[divan::bench(args = SIZES, sample_count = 20)]
fn compile(bencher: Bencher, n: usize) {
    bencher.bench_local(|| policy(black_box(n)));
}
