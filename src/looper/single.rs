//! `single`: one model answers; on a failure that another model might not have (5xx, timeout,
//! connect failure, reset, invalid body, rate limit) the next model in the list is tried.

use super::{Algorithm, Answer, CallDone, CallOutcome, CallPlan, FailureKind, Runtime, Stop};
use crate::config::ModelId;
use crate::openai::ApiError;

pub struct Single {
    models: Vec<ModelId>,
    next: usize,
    failures: Vec<String>,
    /// Every failure so far was a 429: the client should back off, not see a 502.
    only_rate_limited: bool,
}

impl Single {
    pub fn new(models: Vec<ModelId>) -> Self {
        Single {
            models,
            next: 0,
            failures: Vec::new(),
            only_rate_limited: true,
        }
    }

    fn try_next(&mut self, rt: &mut Runtime) {
        let Some(&model) = self.models.get(self.next) else {
            let error = if rt.is_past_deadline() {
                ApiError::deadline_exceeded(rt.deadline_ms())
            } else if self.only_rate_limited && !self.failures.is_empty() {
                ApiError::rate_limited()
            } else {
                ApiError::all_upstreams_failed(&format!("all {} models failed", self.models.len()))
            };
            rt.finish(
                Err(error),
                format!("failover list exhausted ({})", self.failures.join("; ")),
            );
            return;
        };
        self.next += 1;
        match rt.dispatch(model, CallPlan::answer("answer")) {
            Ok(_) if self.next > 1 => rt.failover(model),
            Ok(_) => {}
            Err(Stop::Deadline) => {
                let deadline_ms = rt.deadline_ms();
                rt.finish(
                    Err(ApiError::deadline_exceeded(deadline_ms)),
                    "request deadline reached",
                );
            }
            Err(stop) => rt.finish(
                Err(ApiError::all_upstreams_failed(stop.describe())),
                stop.describe(),
            ),
        }
    }
}

impl Algorithm for Single {
    fn start(&mut self, rt: &mut Runtime) {
        self.try_next(rt);
    }

    fn on_call_done(&mut self, rt: &mut Runtime, done: CallDone) {
        let model = done.model;
        let alias = rt.alias(model).to_string();
        match done.outcome {
            CallOutcome::Ok(completion) => {
                rt.finish(
                    Ok(Answer::Upstream { model, completion }),
                    format!("answered by {alias}"),
                );
            }
            CallOutcome::Failed { kind, .. } if kind.is_client_error() => {
                let status = match kind {
                    FailureKind::Status(s) => s,
                    _ => 400,
                };
                rt.finish(
                    Err(ApiError::upstream_rejected(status)),
                    format!("{alias} rejected the request as invalid (HTTP {status})"),
                );
            }
            CallOutcome::Failed { kind, .. } => {
                self.only_rate_limited &= kind == FailureKind::Status(429);
                self.failures.push(format!("{alias}: {}", kind.describe()));
                self.try_next(rt);
            }
        }
    }
}
