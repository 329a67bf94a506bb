//! `[sim:...]` directives embedded in message text.
//!
//! Syntax: `[sim:KEY=VALUE]` applies to every model, `[sim:KEY@MODEL=VALUE]`
//! only to `MODEL`. A model-scoped directive beats an unscoped one; within
//! the same scope the last occurrence (in message order) wins. Keys:
//!
//! | key       | value                                  |
//! |-----------|----------------------------------------|
//! | `fault`   | a fault kind, or `none` to suppress `failure_rates` |
//! | `latency` | milliseconds (replaces latency + jitter) |
//! | `answer`  | fixed answer text, up to the closing `]` |
//! | `finish`  | `stop`, `length` or `content_filter`   |
//! | `usage`   | `P,C`: forced prompt/completion tokens |
//!
//! A malformed directive (unknown key, bad value, no closing `]`) is a 400,
//! so that typos in tests fail loudly instead of being silently ignored.

use crate::faults::FaultKind;

const OPEN: &str = "[sim:";

/// What a directive asks for the fault: a specific kind, or explicitly none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultDirective {
    None,
    Kind(FaultKind),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub fault: Option<FaultDirective>,
    pub latency_ms: Option<u64>,
    pub answer: Option<String>,
    pub finish: Option<&'static str>,
    pub usage: Option<(u64, u64)>,
}

impl Directives {
    /// Fields set in `over` replace those in `self`.
    fn overlay(&mut self, over: Directives) {
        if over.fault.is_some() {
            self.fault = over.fault;
        }
        if over.latency_ms.is_some() {
            self.latency_ms = over.latency_ms;
        }
        if over.answer.is_some() {
            self.answer = over.answer;
        }
        if over.finish.is_some() {
            self.finish = over.finish;
        }
        if over.usage.is_some() {
            self.usage = over.usage;
        }
    }

    /// Collects the directives that apply to `model` from `texts` (every
    /// text of every message, in order).
    pub fn scan<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        model: &str,
    ) -> Result<Directives, String> {
        let mut global = Directives::default();
        let mut scoped = Directives::default();
        for text in texts {
            let mut rest = text;
            while let Some(start) = rest.find(OPEN) {
                let after = rest.get(start + OPEN.len()..).unwrap_or("");
                let end = after.find(']').ok_or_else(|| {
                    format!(
                        "unterminated directive `{}`",
                        clip(rest.get(start..).unwrap_or(""))
                    )
                })?;
                let body = after.get(..end).unwrap_or("");
                rest = after.get(end + 1..).unwrap_or("");
                let (key, target, value) = split_directive(body)?;
                let parsed = parse_one(key, value)?;
                match target {
                    None => global.overlay(parsed),
                    Some(m) if m == model => scoped.overlay(parsed),
                    Some(_) => {}
                }
            }
        }
        global.overlay(scoped);
        Ok(global)
    }
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// `key[@model]=value` → `(key, model, value)`.
fn split_directive(body: &str) -> Result<(&str, Option<&str>, &str), String> {
    let (lhs, value) = body
        .split_once('=')
        .ok_or_else(|| format!("directive `[sim:{}]` has no `=`", clip(body)))?;
    match lhs.split_once('@') {
        Some((key, model)) => Ok((key.trim(), Some(model.trim()), value)),
        None => Ok((lhs.trim(), None, value)),
    }
}

fn parse_one(key: &str, value: &str) -> Result<Directives, String> {
    let mut d = Directives::default();
    match key {
        "fault" => {
            d.fault = Some(if value.trim() == "none" {
                FaultDirective::None
            } else {
                FaultDirective::Kind(
                    FaultKind::parse(value)
                        .ok_or_else(|| format!("unknown fault kind `{}`", clip(value)))?,
                )
            });
        }
        "latency" => {
            let ms = value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms <= 86_400_000)
                .ok_or_else(|| format!("latency must be milliseconds, got `{}`", clip(value)))?;
            d.latency_ms = Some(ms);
        }
        "answer" => d.answer = Some(value.to_string()),
        "finish" => {
            d.finish = Some(match value.trim() {
                "stop" => "stop",
                "length" => "length",
                "content_filter" => "content_filter",
                other => {
                    return Err(format!(
                        "finish must be stop, length or content_filter, got `{}`",
                        clip(other)
                    ))
                }
            });
        }
        "usage" => {
            let parsed = value.split_once(',').and_then(|(p, c)| {
                Some((p.trim().parse::<u64>().ok()?, c.trim().parse::<u64>().ok()?))
            });
            let (p, c) = parsed
                .filter(|(p, c)| p.checked_add(*c).is_some())
                .ok_or_else(|| {
                    format!("usage must be `PROMPT,COMPLETION`, got `{}`", clip(value))
                })?;
            d.usage = Some((p, c));
        }
        other => return Err(format!("unknown directive `{}`", clip(other))),
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(texts: &[&str], model: &str) -> Result<Directives, String> {
        Directives::scan(texts.iter().copied(), model)
    }

    #[test]
    fn parses_all_keys() {
        let d = scan(
            &[
                "hi [sim:fault=500] [sim:latency=7]",
                "[sim:answer=Hello = world!][sim:finish=length][sim:usage=3, 4]",
            ],
            "m",
        )
        .unwrap();
        assert_eq!(d.fault, Some(FaultDirective::Kind(FaultKind::Status500)));
        assert_eq!(d.latency_ms, Some(7));
        assert_eq!(d.answer.as_deref(), Some("Hello = world!"));
        assert_eq!(d.finish, Some("length"));
        assert_eq!(d.usage, Some((3, 4)));
    }

    #[test]
    fn scoped_beats_global_and_last_wins() {
        let texts = [
            "[sim:fault@a=hang] [sim:fault=reset]",
            "[sim:fault=garbage] [sim:fault@b=none]",
        ];
        assert_eq!(
            scan(&texts, "a").unwrap().fault,
            Some(FaultDirective::Kind(FaultKind::Hang))
        );
        assert_eq!(scan(&texts, "b").unwrap().fault, Some(FaultDirective::None));
        assert_eq!(
            scan(&texts, "c").unwrap().fault,
            Some(FaultDirective::Kind(FaultKind::Garbage))
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "[sim:fault=nope]",
            "[sim:latency=soon]",
            "[sim:finish=maybe]",
            "[sim:usage=1]",
            "[sim:colour=red]",
            "[sim:fault",
            "[sim:novalue]",
        ] {
            assert!(scan(&[bad], "m").is_err(), "{bad}");
        }
        // Even when scoped to another model: a typo is a typo.
        assert!(scan(&["[sim:fault@x=nope]"], "m").is_err());
        // Not a directive at all.
        assert_eq!(
            scan(&["[sim] [SIM:fault=500] sim:fault=500"], "m").unwrap(),
            Directives::default()
        );
    }
}
