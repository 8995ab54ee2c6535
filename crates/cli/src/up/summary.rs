//! The live summary of `zmesh up`: what the proxies hold, any refused edit, and for the demo
//! every flow with the decision the configuration in force expects and what was observed since
//! that configuration reached every proxy.
//!
//! Rendering is pure (time comes in as a value). On a terminal each frame replaces the last,
//! like `top`; into a pipe or a file only what changed is written, so a log stays readable.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::demo::Flow;
use super::expect::Expectation;

/// What was observed of one flow since the generation in force reached every proxy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    pub allowed: u64,
    pub denied: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// The caller identity the app saw on the last allowed request (proof of mTLS).
    pub peer: Option<String>,
}

impl Tally {
    pub fn record(&mut self, status: u16, peer: Option<String>, error: Option<String>) {
        match status {
            200..=299 => {
                self.allowed += 1;
                self.peer = peer.or(self.peer.take());
            }
            403 => self.denied += 1,
            status => {
                self.errors += 1;
                self.last_error = Some(error.unwrap_or_else(|| format!("HTTP {status}")));
            }
        }
    }
}

/// How the observations of one flow compare with its expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    AsExpected,
    /// Nothing observed yet since the generation took effect.
    Waiting,
    Unexpected,
}

pub(crate) fn verdict(expectation: &Expectation, tally: &Tally) -> Verdict {
    if tally.allowed + tally.denied + tally.errors == 0 {
        return Verdict::Waiting;
    }
    let ok = match expectation.allowed {
        Some(true) => tally.allowed > 0 && tally.denied == 0 && tally.errors == 0 && tally.peer.is_some(),
        Some(false) => tally.denied > 0 && tally.allowed == 0 && tally.errors == 0,
        None => false,
    };
    if ok { Verdict::AsExpected } else { Verdict::Unexpected }
}

/// Everything one frame shows.
pub(crate) struct View<'a> {
    pub now: SystemTime,
    pub synced: usize,
    pub proxies: usize,
    pub version: &'a str,
    pub generation: u64,
    /// The refused edit that is still unfixed: its diagnostics, rendered with file:line.
    pub refused: Option<(SystemTime, &'a [String])>,
    /// Demo only: the flows, their expectations and tallies.
    pub flows: &'a [Flow],
    pub expectations: &'a [Expectation],
    pub tallies: &'a [Tally],
    /// When the generation in force reached every proxy; `None` while it is being applied.
    pub in_force_since: Option<SystemTime>,
}

/// One line of a frame and the part of it whose change is worth a line in a log (counts are
/// left out: they change every second).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub text: String,
    pub key: String,
    /// Written with every block in a log, changed or not (a refused edit stays in view).
    pub sticky: bool,
}

fn line(text: String, key: impl Into<String>) -> Line {
    Line { text, key: key.into(), sticky: false }
}

pub(crate) fn render(view: &View<'_>) -> Vec<Line> {
    let mut lines = Vec::new();
    let head = format!(
        "proxies {}/{} SYNCED at version {} (generation {})",
        view.synced, view.proxies, view.version, view.generation
    );
    lines.push(line(format!("[{}] {head}", zmesh_ca::Rfc3339(view.now)), head));
    if let Some((at, errors)) = view.refused {
        let text = format!(
            "  ✘ edit refused at {}: generation {} stays in force until the file is fixed:",
            zmesh_ca::Rfc3339(at),
            view.generation
        );
        lines.push(Line { sticky: true, ..line(text.clone(), text) });
        for error in errors {
            lines.push(Line { sticky: true, ..line(format!("      {error}"), error.clone()) });
        }
    }
    if view.flows.is_empty() {
        return lines;
    }
    let mut as_expected = 0;
    for (id, flow) in view.flows.iter().enumerate() {
        let (Some(expectation), Some(tally)) = (view.expectations.get(id), view.tallies.get(id)) else { continue };
        let verdict = verdict(expectation, tally);
        as_expected += usize::from(verdict == Verdict::AsExpected);
        let mark = match verdict {
            Verdict::AsExpected => "✔",
            Verdict::Waiting => "…",
            Verdict::Unexpected => "✘",
        };
        let mtls = match (&tally.peer, expectation.allowed) {
            (Some(peer), _) => format!("mTLS, app saw {peer}"),
            (None, Some(false)) if tally.denied > 0 => "mTLS, refused by the destination proxy".to_owned(),
            _ => "-".to_owned(),
        };
        let what = format!("{:<29} → {:<30} {:<4} {:<26}", flow.from, flow.to, flow.method, flow.path);
        lines.push(line(
            format!(
                "{mark} {what} expect {:<5} allowed {:>3}  denied {:>3}  errors {:>2}  {mtls}{}",
                expectation.word(),
                tally.allowed,
                tally.denied,
                tally.errors,
                tally.last_error.as_ref().map(|e| format!("  last error: {e}")).unwrap_or_default()
            ),
            format!("{mark} {what} {}", expectation.word()),
        ));
        let why = format!("      why: {}", expectation.reason);
        lines.push(line(why.clone(), format!("{id} {why}")));
    }
    let total = view.flows.len();
    let verdict = match view.in_force_since {
        Some(since) => format!(
            "summary: {as_expected}/{total} flows as expected under generation {} (counted since every proxy had it, {})",
            view.generation,
            zmesh_ca::Rfc3339(since)
        ),
        None => format!(
            "summary: generation {} is being applied ({}/{} proxies have it); counting starts when every proxy has it",
            view.generation, view.synced, view.proxies
        ),
    };
    lines.push(line(verdict.clone(), verdict));
    lines
}

/// Writes frames: in place on a terminal, only the changed lines elsewhere.
#[derive(Debug)]
pub(crate) struct Printer {
    terminal: bool,
    /// Lines printed above every frame on a terminal (the start-up banner), which a redraw
    /// would otherwise wipe.
    banner: Vec<String>,
    last: Vec<Line>,
}

impl Printer {
    pub fn new(terminal: bool, banner: Vec<String>) -> Printer {
        Printer { terminal, banner, last: Vec::new() }
    }

    /// The text to write for `lines`, or `None` when a log would gain nothing.
    pub fn frame(&mut self, lines: Vec<Line>) -> Option<String> {
        let mut out = String::new();
        if self.terminal {
            // Cursor home and clear: the frame replaces the previous one.
            out.push_str("\x1b[H\x1b[2J");
            for banner in &self.banner {
                let _ = writeln!(out, "{banner}");
            }
            out.push('\n');
            for line in &lines {
                let _ = writeln!(out, "{}", line.text);
            }
        } else {
            let changed: Vec<&Line> = lines.iter().filter(|l| !self.last.iter().any(|old| old.key == l.key)).collect();
            let gone = self.last.iter().any(|old| !lines.iter().any(|l| l.key == old.key));
            if changed.is_empty() && !gone {
                return None;
            }
            // The head line (time and sync state) and the verdict always come with a change, so
            // every block in the log reads on its own.
            let last_index = lines.len().saturating_sub(1);
            out.push('\n');
            for (index, line) in lines.iter().enumerate() {
                if index == 0 || index == last_index || line.sticky || changed.iter().any(|c| std::ptr::eq(*c, line)) {
                    let _ = writeln!(out, "{}", line.text);
                }
            }
        }
        self.last = lines;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::up::demo::FLOWS;

    fn view<'a>(
        expectations: &'a [Expectation],
        tallies: &'a [Tally],
        refused: Option<(SystemTime, &'a [String])>,
        at: u64,
    ) -> View<'a> {
        View {
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            synced: 9,
            proxies: 9,
            version: "abc",
            generation: 2,
            refused,
            flows: &FLOWS[..2],
            expectations,
            tallies,
            in_force_since: Some(SystemTime::UNIX_EPOCH),
        }
    }

    fn allow() -> Expectation {
        Expectation { allowed: Some(true), reason: "ALLOW rule matched".into() }
    }

    fn deny() -> Expectation {
        Expectation { allowed: Some(false), reason: "no ALLOW rule matched".into() }
    }

    fn seen(allowed: u64, denied: u64) -> Tally {
        Tally { allowed, denied, peer: (allowed > 0).then(|| "spiffe://x".into()), ..Tally::default() }
    }

    #[test]
    fn a_flow_is_as_expected_only_when_every_observation_agrees_with_the_engine() {
        assert_eq!(verdict(&allow(), &seen(3, 0)), Verdict::AsExpected);
        assert_eq!(verdict(&allow(), &seen(3, 1)), Verdict::Unexpected);
        assert_eq!(verdict(&deny(), &seen(0, 2)), Verdict::AsExpected);
        assert_eq!(verdict(&deny(), &seen(1, 2)), Verdict::Unexpected);
        assert_eq!(verdict(&deny(), &Tally::default()), Verdict::Waiting);
        let mut errored = seen(0, 1);
        errored.record(0, None, Some("connect refused".into()));
        assert_eq!(verdict(&deny(), &errored), Verdict::Unexpected);
    }

    #[test]
    fn the_verdict_line_counts_the_flows_that_match_the_recomputed_expectation() {
        let expectations = [allow(), allow()];
        let tallies = [seen(5, 0), seen(0, 5)];
        let lines = render(&view(&expectations, &tallies, None, 1));
        let text: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert!(text.last().unwrap().starts_with("summary: 1/2 flows as expected under generation 2"), "{text:#?}");
        assert!(text.iter().any(|l| l.contains("why: ALLOW rule matched")), "{text:#?}");
    }

    #[test]
    fn a_refused_edit_is_shown_with_its_diagnostics() {
        let errors = vec!["policies.yaml:12:5: error: AuthorizationPolicy a/b: spec.action: unknown".to_owned()];
        let lines = render(&view(&[], &[], Some((SystemTime::UNIX_EPOCH, &errors)), 1));
        let text: String = lines.iter().map(|l| format!("{}\n", l.text)).collect();
        assert!(text.contains("edit refused") && text.contains("policies.yaml:12:5: error"), "{text}");
        // In a log the refusal comes with every block until it is fixed.
        let expectations = [allow(), deny()];
        let tallies = [seen(1, 0), seen(0, 1)];
        let refused = |at| View {
            flows: &FLOWS[..2],
            ..view(&expectations, &tallies, Some((SystemTime::UNIX_EPOCH, &errors)), at)
        };
        let mut pipe = Printer::new(false, Vec::new());
        assert!(pipe.frame(render(&refused(1))).unwrap().contains("policies.yaml:12:5"));
        let later = View { tallies: &[seen(1, 0), seen(1, 1)], ..refused(2) };
        assert!(pipe.frame(render(&later)).unwrap().contains("policies.yaml:12:5"));
        let fixed = pipe.frame(render(&view(&expectations, &[seen(1, 0), seen(1, 1)], None, 3))).unwrap();
        assert!(!fixed.contains("edit refused"), "{fixed}");
    }

    #[test]
    fn into_a_pipe_only_changes_are_written_and_on_a_terminal_every_frame_redraws() {
        let expectations = [allow(), deny()];
        let mut pipe = Printer::new(false, Vec::new());
        let first = pipe.frame(render(&view(&expectations, &[seen(1, 0), seen(0, 1)], None, 1))).unwrap();
        assert!(first.contains("summary: 2/2"), "{first}");
        // Only the counts moved: nothing is written.
        assert_eq!(pipe.frame(render(&view(&expectations, &[seen(4, 0), seen(0, 4)], None, 2))), None);
        // A flow's verdict changed: its line, the head and the verdict are written, not the other flow.
        let changed = pipe.frame(render(&view(&expectations, &[seen(5, 0), seen(1, 5)], None, 3))).unwrap();
        assert!(changed.contains("✘") && changed.contains("summary: 1/2"), "{changed}");
        assert!(!changed.contains("✔"), "{changed}");

        let mut terminal = Printer::new(true, vec!["banner".into()]);
        let frame = terminal.frame(render(&view(&expectations, &[seen(1, 0), seen(0, 1)], None, 1))).unwrap();
        assert!(frame.starts_with("\x1b[H\x1b[2Jbanner\n"), "{frame:?}");
        assert!(terminal.frame(render(&view(&expectations, &[seen(1, 0), seen(0, 1)], None, 1))).is_some());
    }
}
