//! What replay counts as it goes, and the report made of it: a table for
//! people, JSON for scripts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use super::read::{format_time, BadLine, Request};
use super::Options;
use crate::identity::{ClientKey, KeyDigest};
use crate::snapshot::{RuleLimit, Snapshot};

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Sent upstream (allowed, shadow-limited, or through a store error).
    Admitted,
    /// Refused by a limit or its penalty box (429).
    Limited,
    /// An exemption skipped the limits.
    Exempt,
    /// Refused for another reason: no route, a missing key, no consumer.
    Refused,
}

/// Requests of one rule, by what became of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub admitted: u64,
    pub limited: u64,
    pub exempt: u64,
    pub refused: u64,
}

impl Counts {
    fn add(&mut self, verdict: Verdict) {
        self.requests += 1;
        match verdict {
            Verdict::Admitted => self.admitted += 1,
            Verdict::Limited => self.limited += 1,
            Verdict::Exempt => self.exempt += 1,
            Verdict::Refused => self.refused += 1,
        }
    }
}

/// One key's refusals by one limit, recorded and replayed.
#[derive(Debug, Default)]
struct KeyCount {
    shown: Option<String>,
    recorded: u64,
    candidate: u64,
}

/// `(rule, limit)`, by name.
type LimitName = (String, String);

/// A limit's requests: those of its rule (and plan) it applies to, by what
/// became of them; `limited` counts its own refusals, `refused` everything
/// else refused (another limit's refusals too).
#[derive(Debug)]
struct LimitTally {
    name: LimitName,
    recorded: Counts,
    candidate: Counts,
}

/// A limit's part in a request's fate.
fn verdict_of_limit(verdict: Verdict, decided_it: bool) -> Verdict {
    match verdict {
        Verdict::Limited if !decided_it => Verdict::Refused,
        other => other,
    }
}

/// The slot of a plan in `Tally::rows_by_rule`: 0 without one.
fn slot(plan: Option<usize>) -> usize {
    plan.map_or(0, |p| p + 1)
}

/// The counts replay keeps while it goes.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    show_keys: bool,
    /// The candidate's rule names, by index.
    rule_names: Vec<String>,
    /// By rule name (`None`: no rule): (recorded, candidate).
    rules: HashMap<Option<String>, (Counts, Counts)>,
    /// The candidate's plan names, by index.
    plan_names: Vec<String>,
    /// Per limit: the candidate's, in rule and limit order, then limits only
    /// the log names.
    limits: Vec<LimitTally>,
    row_of: HashMap<LimitName, usize>,
    /// Per candidate rule, per plan slot ([`slot`]): the rows of the limits its
    /// requests get, in the order `Rule::limits_for` gives them.
    rows_by_rule: Vec<Vec<Vec<usize>>>,
    keys: HashMap<(LimitName, KeyDigest), KeyCount>,
    /// Requests whose rule changes: (recorded rule, candidate rule).
    routes: HashMap<(Option<Arc<str>>, Option<String>), u64>,
    requests: u64,
    first: Option<u64>,
    last: Option<u64>,
    pub(crate) bad_lines: u64,
    pub(crate) bad_line_examples: Vec<BadLine>,
    pub(crate) outside_window: u64,
}

impl Tally {
    pub(crate) fn new(rt: &Snapshot, show_keys: bool) -> Self {
        let mut tally = Tally {
            show_keys,
            rule_names: rt.rules.iter().map(|r| r.name.clone()).collect(),
            plan_names: rt.plans.iter().map(|p| p.name.clone()).collect(),
            ..Tally::default()
        };
        for rule in &rt.rules {
            let slots = (0..=rt.plans.len())
                .map(|slot| {
                    let limits = rule.limits_for(slot.checked_sub(1));
                    limits
                        .iter()
                        .map(|l| tally.row((rule.name.clone(), l.name.clone())))
                        .collect()
                })
                .collect();
            tally.rows_by_rule.push(slots);
        }
        tally
    }

    fn row(&mut self, name: LimitName) -> usize {
        if let Some(&row) = self.row_of.get(&name) {
            return row;
        }
        self.row_of.insert(name.clone(), self.limits.len());
        self.limits.push(LimitTally {
            name,
            recorded: Counts::default(),
            candidate: Counts::default(),
        });
        self.limits.len() - 1
    }

    /// What the log says of `request`; `key`: the key of the limit that
    /// refused it, as the candidate counts it.
    pub(crate) fn recorded(
        &mut self,
        request: &Request,
        verdict: Verdict,
        key: Option<ClientKey<'_>>,
    ) {
        self.requests += 1;
        self.first.get_or_insert(request.at);
        self.last = Some(request.at);
        let rule = request.rule.as_deref().map(str::to_string);
        self.rules.entry(rule).or_default().0.add(verdict);
        let deciding = request
            .limit
            .as_deref()
            .filter(|_| verdict == Verdict::Limited);
        let mut counted = false;
        let index = request
            .rule
            .as_deref()
            .and_then(|name| self.rule_names.iter().position(|r| r == name));
        if let Some(index) = index {
            let plan = request
                .identity
                .plan
                .as_deref()
                .and_then(|name| self.plan_names.iter().position(|p| p == name));
            for &row in &self.rows_by_rule[index][slot(plan)] {
                let limit = &mut self.limits[row];
                let decided_it = deciding == Some(limit.name.1.as_str());
                counted |= decided_it;
                limit.recorded.add(verdict_of_limit(verdict, decided_it));
            }
        }
        if let (Some(rule), Some(limit)) = (request.rule.as_deref(), deciding) {
            let name = (rule.to_string(), limit.to_string());
            if !counted {
                // A limit the candidate does not give this request.
                let row = self.row(name.clone());
                self.limits[row].recorded.add(Verdict::Limited);
            }
            if let Some(key) = key {
                self.key(name, &key).recorded += 1;
            }
        }
    }

    /// What the candidate did with `request`: its rule and plan (indices),
    /// the verdict, and for a limited request the deciding limit (its index
    /// among the request's limits) and the key it counted.
    pub(crate) fn candidate(
        &mut self,
        request: &Request,
        (rule, plan): (Option<usize>, Option<usize>),
        verdict: Verdict,
        limit: Option<(usize, &RuleLimit, Option<ClientKey<'_>>)>,
    ) {
        if let Some(index) = rule {
            let deciding = limit.as_ref().map(|(i, ..)| *i);
            for (i, &row) in self.rows_by_rule[index][slot(plan)].iter().enumerate() {
                let decided_it = deciding == Some(i);
                self.limits[row]
                    .candidate
                    .add(verdict_of_limit(verdict, decided_it));
            }
        }
        let rule_name = rule.map(|i| self.rule_names[i].as_str());
        if rule_name != request.rule.as_deref() {
            let change = (request.rule.clone(), rule_name.map(str::to_string));
            *self.routes.entry(change).or_default() += 1;
        }
        let rule_name = rule_name.map(str::to_string);
        if let (Verdict::Limited, Some(rule), Some((_, limit, Some(key)))) =
            (verdict, &rule_name, limit)
        {
            self.key((rule.clone(), limit.name.clone()), &key).candidate += 1;
        }
        self.rules.entry(rule_name).or_default().1.add(verdict);
    }

    fn key(&mut self, limit: LimitName, key: &ClientKey<'_>) -> &mut KeyCount {
        let count = self.keys.entry((limit, key.digest())).or_default();
        if self.show_keys && count.shown.is_none() {
            count.shown = Some(key.to_string());
        }
        count
    }

    pub(crate) fn report(self, options: &Options) -> Report {
        let mut rules: Vec<RuleRow> = self
            .rules
            .iter()
            .map(|(rule, (recorded, candidate))| RuleRow {
                rule: rule.clone(),
                recorded: *recorded,
                candidate: *candidate,
            })
            .collect();
        // The candidate's rules in file order, then the log's others.
        let position = |rule: &Option<String>| {
            rule.as_ref()
                .and_then(|r| self.rule_names.iter().position(|n| n == r))
                .unwrap_or(usize::MAX)
        };
        rules.sort_by(|a, b| (position(&a.rule), &a.rule).cmp(&(position(&b.rule), &b.rule)));
        let unknown_rules = rules
            .iter()
            .filter(|r| r.rule.is_some() && position(&r.rule) == usize::MAX)
            .map(|r| NameCount {
                rule: r.rule.clone().unwrap_or_default(),
                requests: r.recorded.requests,
            })
            .collect();
        let limits = self
            .limits
            .into_iter()
            .map(|l| LimitRow {
                rule: l.name.0,
                limit: l.name.1,
                recorded: l.recorded,
                candidate: l.candidate,
            })
            .collect();
        let mut route_changes: Vec<RouteChange> = self
            .routes
            .into_iter()
            .map(|((from, to), requests)| RouteChange {
                from: from.map(|f| f.to_string()),
                to,
                requests,
            })
            .collect();
        route_changes.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.from.cmp(&b.from)));
        let changes: Vec<KeyChange> = self
            .keys
            .into_iter()
            .filter(|(_, c)| c.recorded != c.candidate)
            .map(|(((rule, limit), digest), c)| KeyChange {
                rule,
                limit,
                key: c.shown.unwrap_or_else(|| digest.to_string()),
                recorded_limited: c.recorded,
                candidate_limited: c.candidate,
            })
            .collect();
        let (mut newly, mut no_longer): (Vec<KeyChange>, Vec<KeyChange>) = changes
            .into_iter()
            .partition(|c| c.candidate_limited > c.recorded_limited);
        let by_key = |a: &KeyChange, b: &KeyChange| {
            (&a.key, &a.rule, &a.limit).cmp(&(&b.key, &b.rule, &b.limit))
        };
        newly.sort_by(|a, b| b.change().cmp(&a.change()).then(by_key(a, b)));
        no_longer.sort_by(|a, b| a.change().cmp(&b.change()).then(by_key(a, b)));
        let keys_changed = (newly.len() as u64, no_longer.len() as u64);
        newly.truncate(options.top);
        no_longer.truncate(options.top);
        Report {
            requests: self.requests,
            from: self.first.map(format_time),
            until: self.last.map(format_time),
            bad_lines: self.bad_lines,
            bad_line_examples: self.bad_line_examples,
            outside_window: self.outside_window,
            rules,
            limits,
            unknown_rules,
            route_changes,
            keys_more_limited: keys_changed.0,
            keys_less_limited: keys_changed.1,
            newly_limited: newly,
            no_longer_limited: no_longer,
            unrecorded: Vec::new(),
        }
    }
}

/// What a replay found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Requests replayed.
    pub requests: u64,
    /// The first and last replayed request's time.
    pub from: Option<String>,
    pub until: Option<String>,
    /// Lines that could not be read (skipped), with the first few.
    pub bad_lines: u64,
    pub bad_line_examples: Vec<BadLine>,
    /// Lines outside `--since`/`--until`.
    pub outside_window: u64,
    /// Per rule (`null`: no rule matched), the log's counts and the candidate's.
    pub rules: Vec<RuleRow>,
    pub limits: Vec<LimitRow>,
    /// Rules the log names that the candidate does not have.
    pub unknown_rules: Vec<NameCount>,
    /// Requests that a different rule (or none) would serve, per change.
    pub route_changes: Vec<RouteChange>,
    /// How many keys are refused more often / less often.
    pub keys_more_limited: u64,
    pub keys_less_limited: u64,
    /// The keys refused more often (the most first), and less often.
    pub newly_limited: Vec<KeyChange>,
    pub no_longer_limited: Vec<KeyChange>,
    /// Identity parts (`header:x-tenant`) and header exemptions
    /// (`x-internal=batch-*`) the candidate reads that no line records.
    pub unrecorded: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RuleRow {
    pub rule: Option<String>,
    pub recorded: Counts,
    pub candidate: Counts,
}

#[derive(Debug, Serialize)]
pub struct LimitRow {
    pub rule: String,
    pub limit: String,
    /// The requests it applied to; `limited`: its own refusals.
    pub recorded: Counts,
    pub candidate: Counts,
}

#[derive(Debug, Serialize)]
pub struct NameCount {
    pub rule: String,
    pub requests: u64,
}

#[derive(Debug, Serialize)]
pub struct RouteChange {
    pub from: Option<String>,
    pub to: Option<String>,
    pub requests: u64,
}

#[derive(Debug, Serialize)]
pub struct KeyChange {
    pub rule: String,
    pub limit: String,
    pub key: String,
    pub recorded_limited: u64,
    pub candidate_limited: u64,
}

impl KeyChange {
    fn change(&self) -> i64 {
        self.candidate_limited as i64 - self.recorded_limited as i64
    }
}

fn signed(recorded: u64, candidate: u64) -> String {
    let change = candidate as i64 - recorded as i64;
    if change == 0 {
        "0".into()
    } else {
        format!("{change:+}")
    }
}

fn rule_shown(rule: &Option<String>) -> &str {
    rule.as_deref().unwrap_or("(no rule)")
}

/// Columns padded to their widest cell, the first left-aligned, the others right.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            let _ = match i {
                0 => write!(out, "{cell:<w$}"),
                _ => write!(out, "  {cell:>w$}"),
            };
        }
        out.push('\n');
    }
    out
}

/// Rows of recorded -> candidate counts, each named.
fn counts_table(what: &str, rows: &[(String, &Counts, &Counts)]) -> String {
    let pair = |r: u64, c: u64| format!("{r} -> {c} ({})", signed(r, c));
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(name, recorded, candidate)| {
            vec![
                name.clone(),
                pair(recorded.requests, candidate.requests),
                pair(recorded.admitted, candidate.admitted),
                pair(recorded.limited, candidate.limited),
                pair(recorded.exempt, candidate.exempt),
                pair(recorded.refused, candidate.refused),
            ]
        })
        .collect();
    let header = [
        what,
        "requests",
        "admitted",
        "limited",
        "exempt",
        "refused otherwise",
    ];
    table(&header, &rows)
}

impl Report {
    /// The report as a person reads it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "replayed {} requests from {} to {}",
            self.requests,
            self.from.as_deref().unwrap_or("-"),
            self.until.as_deref().unwrap_or("-"),
        );
        if self.outside_window > 0 {
            let _ = writeln!(out, "{} lines outside --since/--until", self.outside_window);
        }
        if self.bad_lines > 0 {
            let _ = writeln!(
                out,
                "{} lines could not be read and were skipped:",
                self.bad_lines
            );
            for bad in &self.bad_line_examples {
                let _ = writeln!(out, "  {}:{}: {}", bad.file, bad.line, bad.error);
            }
            if self.bad_lines > self.bad_line_examples.len() as u64 {
                let _ = writeln!(out, "  ...");
            }
        }
        for part in &self.unrecorded {
            let _ = writeln!(
                out,
                "the candidate reads {part} but no line records it (no request carried it, \
                 or the config that wrote the log did not read it): replayed as absent"
            );
        }
        for unknown in &self.unknown_rules {
            let _ = writeln!(
                out,
                "rule {:?} is in the log ({} requests) but not in the candidate",
                unknown.rule, unknown.requests
            );
        }
        out.push_str("\nper rule: recorded -> candidate (change)\n");
        let rules: Vec<(String, &Counts, &Counts)> = self
            .rules
            .iter()
            .map(|r| (rule_shown(&r.rule).to_string(), &r.recorded, &r.candidate))
            .collect();
        out.push_str(&counts_table("rule", &rules));
        out.push_str("\nper limit: the requests it applies to; limited by it, refused otherwise\n");
        let limits: Vec<(String, &Counts, &Counts)> = self
            .limits
            .iter()
            .map(|l| (format!("{}/{}", l.rule, l.limit), &l.recorded, &l.candidate))
            .collect();
        out.push_str(&counts_table("limit", &limits));
        if !self.route_changes.is_empty() {
            out.push_str("\nrequests whose rule changes\n");
            let rows: Vec<Vec<String>> = self
                .route_changes
                .iter()
                .map(|c| {
                    vec![
                        format!("{} -> {}", rule_shown(&c.from), rule_shown(&c.to)),
                        c.requests.to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(&["rule", "requests"], &rows));
        }
        for (title, total, keys) in [
            (
                "keys refused more often",
                self.keys_more_limited,
                &self.newly_limited,
            ),
            (
                "keys refused less often",
                self.keys_less_limited,
                &self.no_longer_limited,
            ),
        ] {
            if keys.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{title} ({total}; the most changed first)");
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.key.clone(),
                        format!("{}/{}", k.rule, k.limit),
                        k.recorded_limited.to_string(),
                        k.candidate_limited.to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(&["key", "limit", "recorded", "candidate"], &rows));
        }
        if self.keys_more_limited == 0 && self.keys_less_limited == 0 {
            out.push_str("\nno key is refused more or less often than recorded\n");
        }
        out
    }
}
