//! The peer's protocol rules, written once for the gateway ([`crate::gateway`]) and the SDK
//! client ([`crate::sdk`]): a sans-I/O core.
//!
//! [`Protocol`] takes envelopes, the current time (unix seconds) and the directory's answers,
//! and returns [`Action`]s; it never reads a socket, Redis or the clock, so every rule is unit
//! tested with plain values (`tests.rs`). A shell (the gateway around its local Redis, the SDK
//! around its relay sessions) feeds it and carries out what it returns. When the core needs a
//! twin's record it returns [`Step::NeedTwin`] and the shell answers with
//! [`Protocol::with_twin`]; when an answer arrives for a call it does not hold in memory it
//! returns [`Step::NeedCall`] (the gateway looks in its backlog in Redis). Both shells run that
//! loop with `shell::drive` over their own lookups. So nothing is looked up that no rule
//! needs: an expired request or an answer from a twin not called costs no directory lookup.
//!
//! The rules (each drop names a [`DropReason`], the `reason` label of
//! `rmb_peer_envelopes_dropped_total`):
//! - **requests** from other twins: without a source twin, dropped (`unsigned`); expired,
//!   refused with 102 before any lookup; then the directory must know the source (103, or
//!   500 when it cannot be asked), the signature must verify against its account key (104),
//!   and a cipher payload must decrypt with the key it publishes (105, 106). A refused
//!   request is answered with a signed error envelope ([`Action::Refuse`]), as the original
//!   `rmb-peer` does. A request passing every check is delivered once: its `(source twin,
//!   uid)` is remembered until the request expires, and a second one is dropped (`replayed`)
//!   — only after verification, so a forgery cannot burn a genuine uid;
//! - **answers** (responses and errors): expired, dropped; one for no call of ours,
//!   dropped (`unexpected`), or (`replayed`) when the call was answered or given up; from a
//!   twin the call did not go to, dropped (`wrong_source`), or (`replayed`) when that twin
//!   answered already. Signed answers must verify (as requests; dropped, not answered).
//!   Unsigned ones (no source: a relay's own error) are taken only as errors, attributed to
//!   the one destination still waiting, or to the waiting twin the message names;
//! - **outgoing** requests and replies are signed; a payload is encrypted whenever the
//!   destination publishes an encryption key and sent plain only when the directory says it
//!   publishes none. When the directory cannot be asked, or does not know the twin, nothing
//!   is sent ([`Action::NotSent`]): a lookup failure never downgrades to plain text. A reply
//!   that cannot be sealed is replaced by a signed error answer saying why.
//!
//! Calls are remembered with a context `C` the shell chooses (the gateway: the caller's
//! `ref` and `ret` list; the SDK: nothing) until every destination answered or they expire;
//! the memory of answered calls and served requests is bounded ([`MAX_REMEMBERED`]).

mod error;
mod keys;
mod replay;

/// Size bounds on a request from another twin, checked before any lookup: its uid (kept in
/// the replay memory) and its command (a Redis list name), both printable and short.
fn request_bounds(env: &Envelope) -> Result<(), ProtocolError> {
    if env.uid.len() > MAX_UID_LEN {
        return Err(ProtocolError::Validation(format!(
            "uid longer than {MAX_UID_LEN} bytes"
        )));
    }
    let command = match &env.message {
        Some(Message::Request(request)) => request.command.as_str(),
        _ => "",
    };
    if command.len() > MAX_COMMAND_LEN || command.chars().any(char::is_control) {
        return Err(ProtocolError::Validation(format!(
            "command must be at most {MAX_COMMAND_LEN} bytes of printable text"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rmb_identity::{DirectoryError, Signer, Twin};
use rmb_proto::{Address, Envelope, Kind, Message};

use crate::direct::REPLY_TTL_SECS;
pub use crate::metrics::DropReason;
pub use error::ProtocolError;
use keys::Keys;
use replay::ExpiringSet;

/// Most request uids remembered for the replay rule, and most answered calls remembered;
/// beyond it the entry closest to its expiry is forgotten first.
pub const MAX_REMEMBERED: usize = 1_000_000;

/// Longest request uid taken from another twin. Every known client sends a UUID (36 bytes);
/// a uid is remembered until its request expires, so without a bound one twin could make the
/// peer hold a million 1 MiB uids.
pub const MAX_UID_LEN: usize = 128;

/// Longest command taken from another twin: each command names a Redis list
/// (`msgbus.<cmd>`) on the peer's host.
pub const MAX_COMMAND_LEN: usize = 256;

/// The directory's answer for a twin, as [`rmb_identity::TwinDirectory::twin`] gives it.
pub type Lookup = Result<Option<Arc<Twin>>, DirectoryError>;

/// A call of ours: a request sent to one or more twins, waiting for their answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<C> {
    /// Every destination; empty when unknown (a call the original peer recorded in the
    /// backlog): then any twin may answer, each once.
    pub destinations: Vec<u32>,
    /// The destinations that have not answered.
    pub waiting: Vec<u32>,
    /// For a call without known destinations: the twins that answered.
    pub answered_by: Vec<u32>,
    /// When the request expires (unix seconds).
    pub expires_at: u64,
    /// The request's time to live in seconds.
    pub ttl: u64,
    /// What the shell needs to hand an answer over.
    pub context: C,
}

impl<C> Call<C> {
    /// A call to `destinations`, all waited for.
    pub fn new(destinations: Vec<u32>, expires_at: u64, ttl: u64, context: C) -> Call<C> {
        Call {
            waiting: destinations.clone(),
            destinations,
            answered_by: Vec::new(),
            expires_at,
            ttl,
            context,
        }
    }

    /// Whether the destinations are unknown (a call the original peer recorded).
    pub fn is_legacy(&self) -> bool {
        self.destinations.is_empty()
    }

    /// Whether `twin` may answer now: a destination that has not answered yet.
    pub fn waits_for(&self, twin: u32) -> bool {
        (self.is_legacy() || self.waiting.contains(&twin)) && !self.answered_by.contains(&twin)
    }

    /// Whether every destination answered (never, for a call without known destinations:
    /// it lasts until it expires).
    pub fn is_done(&self) -> bool {
        !self.is_legacy() && self.waiting.is_empty()
    }

    /// Why an answer from `twin`, which the call does not wait for, is dropped.
    fn refusal(&self, twin: u32) -> DropReason {
        if self.destinations.contains(&twin) || self.answered_by.contains(&twin) {
            DropReason::Replayed
        } else {
            DropReason::WrongSource
        }
    }

    /// Marks `twins` as answered.
    fn settle(&mut self, twins: &[u32]) {
        if self.is_legacy() {
            self.answered_by.extend_from_slice(twins);
        } else {
            self.waiting.retain(|t| !twins.contains(t));
        }
    }

    /// The twin an unsigned error from a relay is about: the only destination still
    /// waiting, or the waiting twin its message names ("unknown twin 7"); 0 when neither.
    fn attribute(&self, error: &Envelope) -> u32 {
        if let [only] = self.waiting.as_slice() {
            return *only;
        }
        let message = match &error.message {
            Some(Message::Error(e)) => e.message.as_str(),
            _ => "",
        };
        message
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|word| word.parse::<u32>().ok())
            .find(|twin| self.waiting.contains(twin))
            .unwrap_or(0)
    }
}

/// A request of ours, before it is sealed for each destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCall {
    /// The uid every destination's envelope carries (answers come back with it).
    pub uid: String,
    /// The command called.
    pub command: String,
    /// Tags, passed through.
    pub tags: Option<String>,
    /// The payload's schema.
    pub schema: Option<String>,
    /// When the request is sent (unix seconds).
    pub timestamp: u64,
    /// Its time to live in seconds.
    pub ttl: u64,
}

/// What a service answers a request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A response carrying `data` (sealed for the caller) with its schema.
    Data {
        /// The response payload, plain.
        data: Vec<u8>,
        /// Its schema.
        schema: Option<String>,
    },
    /// An error answer.
    Error {
        /// The error code.
        code: u32,
        /// What went wrong.
        message: String,
    },
}

/// An envelope dropped instead of delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Its uid.
    pub uid: String,
    /// The twin it came from (0: none).
    pub twin: u32,
    /// The metric reason.
    pub reason: DropReason,
    /// The check that failed, for checks that have one.
    pub why: Option<ProtocolError>,
}

/// A request from another twin that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The request as received, without its payload.
    pub request: Envelope,
    /// The calling twin (and its session).
    pub source: Address,
    /// The command called.
    pub command: String,
    /// The payload, decrypted.
    pub data: Vec<u8>,
}

/// What an answer to one of our calls carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerBody {
    /// A response payload, decrypted.
    Data(Vec<u8>),
    /// An error answer (from the twin called, or from a relay).
    Error {
        /// The error code.
        code: u32,
        /// The error message.
        message: String,
    },
    /// A response whose payload could not be decrypted.
    Unreadable(ProtocolError),
}

/// An answer to one of our calls, verified and matched to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<C> {
    /// The call's uid.
    pub uid: String,
    /// The twin that answered; for a relay's error, the twin it is about (0 when it cannot
    /// be told).
    pub from: Address,
    /// Response or error.
    pub kind: Kind,
    /// What it says.
    pub body: AnswerBody,
    /// The payload's schema.
    pub schema: Option<String>,
    /// When it was sent.
    pub timestamp: u64,
    /// The call after this answer (what is still waited for, and the shell's context).
    pub call: Call<C>,
}

/// What the shell does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<C> {
    /// Write this signed envelope to a relay.
    Send(Envelope),
    /// A request from another twin was refused: write `reply` (a signed error answer with
    /// the original's code) to a relay and count the refusal (`why.drop_reason()`).
    Refuse {
        /// The error answer.
        reply: Envelope,
        /// Why the request was refused.
        why: ProtocolError,
    },
    /// Count the drop; nothing else to do.
    Drop(Dropped),
    /// Nothing to do (pings and pongs from twins).
    Ignore,
    /// Hand a request to the service.
    Deliver(Delivery),
    /// Hand an answer to the caller waiting for it.
    Answer(Answer<C>),
    /// A payload could not be sealed for `twin`: nothing was sent. For a reply, `instead`
    /// is the signed error answer telling the caller why.
    NotSent {
        /// The envelope's uid.
        uid: String,
        /// The destination.
        twin: u32,
        /// Why.
        why: ProtocolError,
        /// What to send instead, if anything.
        instead: Option<Envelope>,
    },
}

impl<C> Action<C> {
    fn dropped(env: &Envelope, twin: u32, reason: DropReason) -> Action<C> {
        Action::Drop(Dropped {
            uid: env.uid.clone(),
            twin,
            reason,
            why: None,
        })
    }

    fn refused(env: &Envelope, twin: u32, why: ProtocolError) -> Action<C> {
        Action::Drop(Dropped {
            uid: env.uid.clone(),
            twin,
            reason: why.drop_reason(),
            why: Some(why),
        })
    }
}

/// Where the core stands with one input.
#[derive(Debug)]
pub enum Step<C> {
    /// Done: carry out the action.
    Done(Action<C>),
    /// The core needs the directory's record of this twin: answer with
    /// [`Protocol::with_twin`].
    NeedTwin(u32, TwinWait),
    /// An answer arrived for a call with this uid the core does not hold: answer with
    /// [`Protocol::with_call`] (the call from storage, or `None`).
    NeedCall(String, CallWait),
}

/// An input waiting for a twin's record (see [`Step::NeedTwin`]).
#[derive(Debug)]
pub struct TwinWait(Waiting);

/// An answer waiting for its call (see [`Step::NeedCall`]).
#[derive(Debug)]
pub struct CallWait(Envelope);

#[derive(Debug)]
enum Waiting {
    /// A request from this twin, to verify and open.
    Request(Envelope),
    /// An answer from this twin, to verify and open.
    Answer(Envelope),
    /// An envelope of ours to seal for this twin; `reply`: replace it by an error answer
    /// when it cannot be sealed.
    Seal {
        env: Envelope,
        plain: Vec<u8>,
        reply: bool,
    },
}

struct State<C> {
    /// Our calls waiting for answers, by uid.
    calls: HashMap<String, Call<C>>,
    /// Our calls answered or given up, until an answer to them would expire.
    finished: ExpiringSet<String>,
    /// Requests delivered: (source twin, uid) until the request expires.
    served: ExpiringSet<(u32, String)>,
}

impl<C: Clone> State<C> {
    /// Marks `twins` as answered for `uid`; a call every destination answered is finished.
    fn settle(&mut self, uid: &str, twins: &[u32], now: u64) -> Option<Call<C>> {
        let call = self.calls.get_mut(uid)?;
        call.settle(twins);
        let call = call.clone();
        if call.is_done() {
            self.finish(uid, now);
        }
        Some(call)
    }

    fn finish(&mut self, uid: &str, now: u64) -> Option<Call<C>> {
        let call = self.calls.remove(uid)?;
        self.finished
            .insert(uid.to_string(), now.saturating_add(REPLY_TTL_SECS), now);
        Some(call)
    }

    /// Why an answer to `uid` finds no call.
    fn no_call(&self, uid: &str, now: u64) -> DropReason {
        if self.finished.contains(&uid.to_string(), now) {
            DropReason::Replayed
        } else {
            DropReason::Unexpected
        }
    }
}

/// The protocol core of one twin: its keys, its calls and its replay memory. Shared by
/// reference (`&self` everywhere): its state sits behind a short lock never held across
/// anything slow, so the SDK's concurrent handlers share one core.
pub struct Protocol<C> {
    keys: Keys,
    state: Mutex<State<C>>,
}

impl<C> std::fmt::Debug for Protocol<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protocol")
            .field("me", &self.keys.me)
            .finish_non_exhaustive()
    }
}

impl<C: Clone> Protocol<C> {
    /// The core of twin `twin`, signing with `signer`.
    pub fn new(signer: Signer, twin: u32) -> Protocol<C> {
        Protocol::with_memory(signer, twin, MAX_REMEMBERED)
    }

    /// Like [`Protocol::new`], remembering at most `capacity` request uids and answered calls.
    pub fn with_memory(signer: Signer, twin: u32, capacity: usize) -> Protocol<C> {
        Protocol {
            keys: Keys::new(signer, Address::new(twin, None)),
            state: Mutex::new(State {
                calls: HashMap::new(),
                finished: ExpiringSet::new(capacity),
                served: ExpiringSet::new(capacity),
            }),
        }
    }

    /// Our address: the source of everything we send.
    pub fn me(&self) -> &Address {
        &self.keys.me
    }

    // ---- incoming ----

    /// Takes an envelope from a relay.
    pub fn receive(&self, env: Envelope, now: u64) -> Step<C> {
        match env.kind() {
            Kind::Request => self.receive_request(env, now),
            Kind::Response | Kind::Error => self.receive_answer(env, now),
            Kind::Ping | Kind::Pong | Kind::Empty => Step::Done(Action::Ignore),
        }
    }

    /// Continues with the directory's answer for the twin asked for in [`Step::NeedTwin`].
    pub fn with_twin(&self, wait: TwinWait, lookup: Lookup, now: u64) -> Action<C> {
        match wait.0 {
            Waiting::Request(env) => self.check_request(env, lookup, now),
            Waiting::Answer(env) => self.check_answer(env, lookup, now),
            Waiting::Seal { env, plain, reply } => self.seal(env, plain, reply, lookup, now),
        }
    }

    /// Continues with the call asked for in [`Step::NeedCall`]: found in storage, or `None`.
    pub fn with_call(&self, wait: CallWait, call: Option<Call<C>>, now: u64) -> Step<C> {
        let env = wait.0;
        match call {
            Some(call) => {
                self.restore_call(env.uid.clone(), call, now);
                self.screen_answer(env, now)
            }
            None => Step::Done(Action::dropped(
                &env,
                env.source_twin(),
                DropReason::Unexpected,
            )),
        }
    }

    fn receive_request(&self, env: Envelope, now: u64) -> Step<C> {
        let source = env.source_twin();
        if source == 0 {
            return Step::Done(Action::dropped(&env, 0, DropReason::Unsigned));
        }
        if env.is_expired(now) {
            return Step::Done(self.refuse(env, ProtocolError::expired(), now));
        }
        if let Err(why) = request_bounds(&env) {
            return Step::Done(self.refuse(env, why, now));
        }
        Step::NeedTwin(source, TwinWait(Waiting::Request(env)))
    }

    fn check_request(&self, mut env: Envelope, lookup: Lookup, now: u64) -> Action<C> {
        let source = env.source.clone().unwrap_or_default();
        let opened = record(source.twin, lookup).and_then(|record| {
            self.keys.verify(&env, &record)?;
            self.keys.open(&record, &env)
        });
        let data = match opened {
            Ok(data) => data,
            Err(why) => return self.refuse(env, why, now),
        };
        let Some(Message::Request(request)) = &env.message else {
            return Action::Ignore;
        };
        let command = request.command.clone();
        let first = self.state.lock().served.insert(
            (source.twin, env.uid.clone()),
            env.expires_at().max(now),
            now,
        );
        if !first {
            return Action::dropped(&env, source.twin, DropReason::Replayed);
        }
        env.payload = None;
        Action::Deliver(Delivery {
            request: env,
            source,
            command,
            data,
        })
    }

    /// The signed error answer to a refused request, as the original sends it: same uid,
    /// back to its source, living as long as the request did.
    fn refuse(&self, request: Envelope, why: ProtocolError, now: u64) -> Action<C> {
        let ttl = request.expiration.max(1);
        let reply = Envelope::error_reply(&request, why.code(), why.to_string(), now, ttl);
        Action::Refuse {
            reply: self.keys.sign(reply),
            why,
        }
    }

    fn receive_answer(&self, env: Envelope, now: u64) -> Step<C> {
        if env.is_expired(now) {
            let source = env.source_twin();
            return Step::Done(Action::dropped(&env, source, DropReason::Expired));
        }
        {
            let state = self.state.lock();
            if !state.calls.contains_key(&env.uid) {
                if state.finished.contains(&env.uid, now) {
                    let source = env.source_twin();
                    return Step::Done(Action::dropped(&env, source, DropReason::Replayed));
                }
                return Step::NeedCall(env.uid.clone(), CallWait(env));
            }
        }
        self.screen_answer(env, now)
    }

    /// The checks of an answer that need no directory: a call of ours, waiting for its
    /// source. A relay's unsigned error is accepted here; a signed answer goes on to be
    /// verified.
    fn screen_answer(&self, env: Envelope, now: u64) -> Step<C> {
        let source = env.source_twin();
        let state = self.state.lock();
        let Some(call) = state.calls.get(&env.uid) else {
            let reason = state.no_call(&env.uid, now);
            return Step::Done(Action::dropped(&env, source, reason));
        };
        if source == 0 {
            // The relay's own errors (unknown twin, offline, limits) are unsigned and carry
            // no source; they come from a relay we hold a session with.
            if env.kind() != Kind::Error {
                return Step::Done(Action::dropped(&env, 0, DropReason::Unsigned));
            }
            let about = call.attribute(&env);
            drop(state);
            let body = match &env.message {
                Some(Message::Error(e)) => AnswerBody::Error {
                    code: e.code,
                    message: e.message.clone(),
                },
                _ => AnswerBody::Data(Vec::new()),
            };
            return Step::Done(self.accept(env, Address::new(about, None), body, now));
        }
        if !call.waits_for(source) {
            let reason = call.refusal(source);
            return Step::Done(Action::dropped(&env, source, reason));
        }
        Step::NeedTwin(source, TwinWait(Waiting::Answer(env)))
    }

    fn check_answer(&self, env: Envelope, lookup: Lookup, now: u64) -> Action<C> {
        let source = env.source.clone().unwrap_or_default();
        let verified = record(source.twin, lookup).and_then(|record| {
            self.keys.verify(&env, &record)?;
            Ok(record)
        });
        let record = match verified {
            Ok(record) => record,
            Err(why) => return Action::refused(&env, source.twin, why),
        };
        let body = match &env.message {
            Some(Message::Error(e)) => AnswerBody::Error {
                code: e.code,
                message: e.message.clone(),
            },
            _ => match self.keys.open(&record, &env) {
                Ok(data) => AnswerBody::Data(data),
                Err(why) => AnswerBody::Unreadable(why),
            },
        };
        self.accept(env, source, body, now)
    }

    /// Settles the call for `from` and hands the answer over, unless the call stopped
    /// waiting for `from` meanwhile (a concurrent duplicate).
    fn accept(&self, env: Envelope, from: Address, body: AnswerBody, now: u64) -> Action<C> {
        let mut state = self.state.lock();
        let waited = match state.calls.get(&env.uid) {
            None => Err(state.no_call(&env.uid, now)),
            Some(call) if from.twin != 0 && !call.waits_for(from.twin) => {
                Err(call.refusal(from.twin))
            }
            Some(_) => Ok(()),
        };
        if let Err(reason) = waited {
            return Action::dropped(&env, from.twin, reason);
        }
        let Some(call) = state.settle(&env.uid, &[from.twin], now) else {
            return Action::Ignore;
        };
        Action::Answer(Answer {
            kind: env.kind(),
            uid: env.uid,
            from,
            body,
            schema: env.schema,
            timestamp: env.timestamp,
            call,
        })
    }

    // ---- outgoing ----

    /// Seals the request of `call` for `dst`: asks for `dst`'s twin, then
    /// [`Action::Send`]s the signed request or reports it [`Action::NotSent`].
    pub fn request(&self, call: &NewCall, dst: u32, payload: Vec<u8>) -> Step<C> {
        let to = Address::new(dst, None);
        let env = Envelope::request(
            call.uid.clone(),
            to,
            &call.command,
            call.timestamp,
            call.ttl,
        )
        .with_tags(call.tags.clone())
        .with_schema(call.schema.clone());
        Step::NeedTwin(
            dst,
            TwinWait(Waiting::Seal {
                env,
                plain: payload,
                reply: false,
            }),
        )
    }

    /// Answers the request `uid` of `to` with `reply`: an error goes at once; a response is
    /// sealed for `to` first.
    pub fn reply(&self, uid: String, to: Address, reply: Reply, now: u64) -> Step<C> {
        match reply {
            Reply::Error { code, message } => {
                let env = Envelope::error(uid, Some(to), code, message, now, REPLY_TTL_SECS);
                Step::Done(Action::Send(self.keys.sign(env)))
            }
            Reply::Data { data, schema } => {
                let twin = to.twin;
                let env =
                    Envelope::response(uid, Some(to), now, REPLY_TTL_SECS).with_schema(schema);
                Step::NeedTwin(
                    twin,
                    TwinWait(Waiting::Seal {
                        env,
                        plain: data,
                        reply: true,
                    }),
                )
            }
        }
    }

    fn seal(
        &self,
        env: Envelope,
        plain: Vec<u8>,
        reply: bool,
        lookup: Lookup,
        now: u64,
    ) -> Action<C> {
        let twin = env.destination_twin();
        match record(twin, lookup).and_then(|record| self.keys.seal(&record, plain)) {
            Ok(payload) => Action::Send(self.keys.sign(env.with_payload(payload))),
            Err(why) => {
                let instead = reply.then(|| {
                    let message = format!("the service's reply was not sent: {why}");
                    let error = Envelope::error(
                        env.uid.clone(),
                        env.destination.clone(),
                        why.code(),
                        message,
                        now,
                        REPLY_TTL_SECS,
                    );
                    self.keys.sign(error)
                });
                Action::NotSent {
                    uid: env.uid,
                    twin,
                    why,
                    instead,
                }
            }
        }
    }

    // ---- calls ----

    /// Remembers a call, so answers to `uid` are matched to it.
    pub fn start_call(&self, uid: String, call: Call<C>) {
        self.state.lock().calls.insert(uid, call);
    }

    /// Takes a call back from storage (the gateway's backlog after a restart), unless it is
    /// held already or was finished. Returns whether it was taken.
    pub fn restore_call(&self, uid: String, call: Call<C>, now: u64) -> bool {
        let mut state = self.state.lock();
        if state.calls.contains_key(&uid) || state.finished.contains(&uid, now) {
            return false;
        }
        state.calls.insert(uid, call);
        true
    }

    /// Marks `twins` as answered for `uid` without an answer (the request was not sent to
    /// them). Returns the call as it stands, if it is one of ours.
    pub fn settle(&self, uid: &str, twins: &[u32], now: u64) -> Option<Call<C>> {
        self.state.lock().settle(uid, twins, now)
    }

    /// Stops waiting for answers to `uid` (the caller gave up); later answers are replays.
    pub fn end_call(&self, uid: &str, now: u64) {
        self.state.lock().finish(uid, now);
    }

    /// Removes the calls expired at `now` and returns them (with the twins that never
    /// answered); forgets what the replay rules no longer need.
    pub fn expire_calls(&self, now: u64) -> Vec<(String, Call<C>)> {
        let mut state = self.state.lock();
        let expired: Vec<String> = state
            .calls
            .iter()
            .filter(|(_, call)| call.expires_at <= now)
            .map(|(uid, _)| uid.clone())
            .collect();
        let calls = expired
            .into_iter()
            .filter_map(|uid| state.finish(&uid, now).map(|call| (uid, call)))
            .collect();
        state.finished.forget_expired(now);
        state.served.forget_expired(now);
        calls
    }

    /// How many calls wait for answers.
    pub fn pending_calls(&self) -> usize {
        self.state.lock().calls.len()
    }
}

/// The record of `twin` from the directory's answer, or why there is none.
fn record(twin: u32, lookup: Lookup) -> Result<Arc<Twin>, ProtocolError> {
    match lookup {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(ProtocolError::UnknownTwin(twin)),
        Err(e) => Err(ProtocolError::directory(twin, &e)),
    }
}
