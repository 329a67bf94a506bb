//! Dispatched calls seen from the test, their answers, and time-driven events.
//!
//! An answer is delivered like Envoy's `onHttpCallSuccess`/`onHttpCallFailure`:
//! `proxy_on_http_call_response(context, token, headers, body_len, trailers)` for
//! the context that dispatched the call, with the response readable through maps
//! 6/7 and buffer 4 during that callback only. A reset delivers `(0, 0, 0)` and
//! makes `proxy_get_status` report `BrokenConnection` (11) / `"reset"`; the message
//! is cleared afterwards but the code stays, as in Envoy. The call leaves the
//! in-flight count before the callback, so a failover dispatched from the callback
//! does not count as concurrent with the call it replaces.

use super::{Vm, ROOT_CONTEXT_ID};
use crate::abi::Status;
use crate::calls::{CallResponse, CallState, HttpCall};
use crate::error::{HostError, Result};
use crate::headers::HeaderMap;
use crate::request::ContextId;

/// Something [`Vm::run_for`] fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerEvent {
    /// `proxy_on_tick` ran at this virtual time (ms since the Unix epoch).
    Tick(u64),
    /// The call with this token timed out (Envoy's synthesized 504).
    Timeout(u32),
}

impl Vm {
    /// Calls waiting for an answer, by token.
    pub fn pending_calls(&self) -> Vec<HttpCall> {
        self.store.data().calls.pending().cloned().collect()
    }

    /// Calls of one context waiting for an answer, by token.
    pub fn pending_calls_for(&self, context: ContextId) -> Vec<HttpCall> {
        self.store
            .data()
            .calls
            .pending()
            .filter(|c| c.context == context)
            .cloned()
            .collect()
    }

    /// Every call ever dispatched, by token.
    pub fn all_calls(&self) -> Vec<HttpCall> {
        self.store.data().calls.all().cloned().collect()
    }

    /// One call by token.
    pub fn call(&self, token: u32) -> Option<HttpCall> {
        self.store.data().calls.get(token).cloned()
    }

    /// Peak number of calls of `context` in flight at once.
    pub fn max_in_flight(&self, context: ContextId) -> usize {
        self.store.data().calls.max_in_flight(context)
    }

    /// Peak number of calls of the whole VM in flight at once.
    pub fn max_in_flight_total(&self) -> usize {
        self.store.data().calls.max_in_flight_total()
    }

    /// Calls of `context` in flight now.
    pub fn in_flight(&self, context: ContextId) -> usize {
        self.store.data().calls.in_flight(context)
    }

    /// Answers a call with `:status` plus `headers` and `body`.
    pub fn respond(
        &mut self,
        token: u32,
        status: u32,
        headers: impl Into<HeaderMap>,
        body: impl Into<Vec<u8>>,
    ) -> Result<()> {
        self.respond_with(token, CallResponse::new(status, headers, body))
    }

    /// Answers a call with a JSON body and `content-type: application/json`.
    pub fn respond_json(
        &mut self,
        token: u32,
        status: u32,
        body: &serde_json::Value,
    ) -> Result<()> {
        self.respond_with(token, CallResponse::json(status, body))
    }

    /// Answers a call with a fully built response.
    pub fn respond_with(&mut self, token: u32, response: CallResponse) -> Result<()> {
        self.deliver(token, Some(response))
    }

    /// The call's timeout fires: Envoy synthesizes `:status 504` and
    /// `upstream request timeout`.
    pub fn timeout(&mut self, token: u32) -> Result<()> {
        self.deliver(token, Some(CallResponse::timeout()))
    }

    /// The cluster refuses the connection: `:status 503` and Envoy's
    /// `upstream connect error ...` body.
    pub fn connect_failure(&mut self, token: u32) -> Result<()> {
        self.deliver(token, Some(CallResponse::connect_failure()))
    }

    /// The call's stream is reset: no headers, `proxy_get_status` = reset.
    pub fn reset(&mut self, token: u32) -> Result<()> {
        self.deliver(token, None)
    }

    fn deliver(&mut self, token: u32, response: Option<CallResponse>) -> Result<()> {
        let failed = self.failure.is_some();
        let state = self.store.data_mut();
        let outcome = match (&response, failed) {
            (_, true) => CallState::Dropped,
            (Some(r), false) => CallState::Answered {
                status: r.status().unwrap_or(0),
            },
            (None, false) => CallState::Reset,
        };
        let call = state
            .calls
            .complete(token, outcome)
            .ok_or(HostError::UnknownToken(token))?;
        if failed || !state.is_live_context(call.context) {
            return Ok(());
        }
        let context = call.context;
        let counts = match &response {
            Some(r) => (
                r.headers.len() as i32,
                r.body.len() as i32,
                r.trailers.as_ref().map_or(0, |t| t.len() as i32),
            ),
            None => (0, 0, 0),
        };
        let reset = response.is_none();
        if reset {
            set_status(state, context, Status::BrokenConnection as u32, "reset");
        }
        state.call_response = response;
        let callback = self.exports.http_call_response.clone();
        self.invoke(
            context,
            "proxy_on_http_call_response",
            callback,
            (context as i32, token as i32, counts.0, counts.1, counts.2),
            (),
        );
        let state = self.store.data_mut();
        state.call_response = None;
        if reset {
            let code = Status::BrokenConnection as u32;
            set_status(state, context, code, "");
        }
        self.settle();
        Ok(())
    }

    // ----- time ------------------------------------------------------------

    /// Virtual wall clock in ms since the Unix epoch (what
    /// `proxy_get_current_time_nanoseconds` and WASI `clock_time_get` report).
    pub fn now_ms(&self) -> u64 {
        self.store.data().clock.now_ms()
    }

    /// Moves the virtual clock forward without firing anything; see
    /// [`Vm::run_for`] for an event loop.
    pub fn advance(&mut self, ms: u64) {
        let clock = &mut self.store.data_mut().clock;
        clock.elapsed_ns = clock
            .elapsed_ns
            .saturating_add(ms.saturating_mul(1_000_000));
    }

    fn set_now_ms(&mut self, at_ms: u64) {
        let clock = &mut self.store.data_mut().clock;
        let target = at_ms
            .saturating_sub(clock.start_unix_ms)
            .saturating_mul(1_000_000);
        clock.elapsed_ns = clock.elapsed_ns.max(target);
    }

    /// The tick period the plugin set (0 = none).
    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    /// Fires `proxy_on_tick` now if the plugin set a tick period; returns whether
    /// it fired.
    pub fn tick(&mut self) -> bool {
        if self.tick_period_ms() == 0 || self.failure.is_some() {
            return false;
        }
        let now = self.now_ms();
        self.store.data_mut().last_tick_ms = now;
        let on_tick = self.exports.tick.clone();
        self.invoke(
            ROOT_CONTEXT_ID,
            "proxy_on_tick",
            on_tick,
            ROOT_CONTEXT_ID as i32,
            (),
        );
        self.settle();
        true
    }

    /// Times out, in deadline order, every pending call whose timeout has passed.
    pub fn expire_calls(&mut self) -> Vec<u32> {
        let now = self.now_ms();
        let mut due: Vec<(u64, u32)> = self
            .store
            .data()
            .calls
            .pending()
            .filter_map(|c| c.deadline_ms().map(|d| (d, c.token)))
            .filter(|(deadline, _)| *deadline <= now)
            .collect();
        due.sort_unstable();
        let mut expired = Vec::new();
        for (_, token) in due {
            if self.timeout(token).is_ok() {
                expired.push(token);
            }
        }
        expired
    }

    /// Runs Envoy's timers for `ms` of virtual time: every tick and call timeout
    /// that falls in the window fires in time order (the clock is set to each
    /// event's time first). Returns what fired.
    pub fn run_for(&mut self, ms: u64) -> Vec<TimerEvent> {
        let end = self.now_ms().saturating_add(ms);
        let mut fired = Vec::new();
        while self.failure.is_none() {
            let next_timeout = self
                .store
                .data()
                .calls
                .pending()
                .filter_map(|c| c.deadline_ms().map(|d| (d, c.token)))
                .min();
            let state = self.store.data();
            let next_tick = (state.tick_period_ms > 0)
                .then(|| state.last_tick_ms + u64::from(state.tick_period_ms));
            let event = match (next_timeout, next_tick) {
                (Some((deadline, token)), Some(tick)) if deadline <= tick => {
                    Some((deadline, TimerEvent::Timeout(token)))
                }
                (_, Some(tick)) => Some((tick, TimerEvent::Tick(tick))),
                (Some((deadline, token)), None) => Some((deadline, TimerEvent::Timeout(token))),
                (None, None) => None,
            };
            let Some((at, event)) = event.filter(|(at, _)| *at <= end) else {
                break;
            };
            self.set_now_ms(at);
            match event {
                TimerEvent::Timeout(token) => {
                    let _ = self.timeout(token);
                }
                TimerEvent::Tick(_) => {
                    self.tick();
                }
            }
            fired.push(event);
        }
        self.set_now_ms(end);
        fired
    }

    /// Delivers pending `proxy_on_queue_ready` notifications for queues this VM
    /// registered (Envoy posts them to the owning worker). Returns how many ran.
    pub fn deliver_queue_ready(&mut self) -> usize {
        let uid = self.store.data().vm_uid;
        let ready = self.store.data().shared.take_ready(uid);
        let count = ready.len();
        for item in ready {
            let callback = self.exports.queue_ready.clone();
            self.invoke(
                item.context,
                "proxy_on_queue_ready",
                callback,
                (item.context as i32, item.queue as i32),
                (),
            );
            self.settle();
        }
        count
    }
}

fn set_status(state: &mut crate::state::HostState, context: ContextId, code: u32, message: &str) {
    let slot = match state.streams.get_mut(&context) {
        Some(stream) => &mut stream.status,
        None => &mut state.root_status,
    };
    *slot = (code, message.to_string());
}
