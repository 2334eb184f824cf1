//! Every rule of the core with plain values: no Redis, no sockets, no clock (times are
//! injected unix seconds), directory answers given by hand.

use std::collections::HashMap;
use std::sync::Arc;

use rmb_identity::{
    sign_envelope, verify_envelope, DirectoryError, Identity, KeyType, SharedKey, Signer, Twin,
};
use rmb_proto::{codes, Address, Envelope, Kind, Message, Payload};

use super::*;

const NOW: u64 = 1_700_000_000;
const ME: u32 = 1;
const ALICE: u32 = 2; // publishes an encryption key
const BOB: u32 = 3; // publishes none
const CAROL: u32 = 4; // publishes an unusable one
const STRANGER: u32 = 9; // not in the directory

fn signer(id: u32) -> Signer {
    let identity = Identity::from_seed(&[id as u8; 32]).expect("a valid seed");
    Signer::new(identity, KeyType::Ed25519)
}

/// The directory as the shell would answer for each twin; `down`: it cannot be asked.
struct Directory {
    twins: HashMap<u32, Arc<Twin>>,
    down: bool,
}

impl Directory {
    fn new() -> Directory {
        let record = |id: u32, pk: Option<Vec<u8>>| {
            let twin = Twin {
                id,
                account: signer(id).public_key(),
                relays: Vec::new(),
                pk,
            };
            (id, Arc::new(twin))
        };
        let pk = |id: u32| Some(signer(id).identity().encryption_public_key().to_vec());
        Directory {
            twins: HashMap::from([
                record(ME, pk(ME)),
                record(ALICE, pk(ALICE)),
                record(BOB, None),
                record(CAROL, Some(vec![0x02; 5])),
            ]),
            down: false,
        }
    }

    fn down() -> Directory {
        Directory {
            down: true,
            ..Directory::new()
        }
    }

    fn lookup(&self, twin: u32) -> Lookup {
        if self.down {
            return Err(DirectoryError::Unavailable("chain unreachable".into()));
        }
        Ok(self.twins.get(&twin).cloned())
    }
}

/// The call context the tests remember: a name.
type Ctx = &'static str;

fn core() -> Protocol<Ctx> {
    Protocol::new(signer(ME), ME)
}

/// Runs `step` to its action like a shell would; returns it with the twins looked up.
/// `stored`: what storage answers for a call the core does not hold.
fn run(
    core: &Protocol<Ctx>,
    mut step: Step<Ctx>,
    dir: &Directory,
    stored: Option<Call<Ctx>>,
) -> (Action<Ctx>, Vec<u32>) {
    let mut looked_up = Vec::new();
    let mut stored = stored;
    loop {
        step = match step {
            Step::Done(action) => return (action, looked_up),
            Step::NeedTwin(twin, wait) => {
                looked_up.push(twin);
                return (core.with_twin(wait, dir.lookup(twin), NOW), looked_up);
            }
            Step::NeedCall(_, wait) => core.with_call(wait, stored.take(), NOW),
        }
    }
}

fn receive(core: &Protocol<Ctx>, env: Envelope, dir: &Directory) -> (Action<Ctx>, Vec<u32>) {
    run(core, core.receive(env, NOW), dir, None)
}

fn sign(mut env: Envelope, by: u32) -> Envelope {
    sign_envelope(&mut env, &signer(by));
    env
}

fn shared(a: u32, b: u32) -> SharedKey {
    SharedKey::derive(
        signer(a).identity(),
        &signer(b).identity().encryption_public_key(),
    )
    .expect("valid keys")
}

/// A request from `from` (session "s") to us, signed by `from`, plain payload "hi".
fn request_from(from: u32, uid: &str) -> Envelope {
    let env = Envelope::request(uid.into(), Address::new(ME, None), "svc.echo", NOW - 5, 60)
        .with_source(Address::new(from, Some("s".into())))
        .with_payload(Payload::Plain(b"hi".to_vec()));
    sign(env, from)
}

/// How a case ends, in short.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered(Vec<u8>),
    Refused(u32, String),
    Dropped(DropReason),
    Answered(u32, AnswerBody),
    Sent(Option<Payload>),
    NotSent(u32, bool),
    Ignored,
}

fn outcome(action: &Action<Ctx>) -> Outcome {
    match action {
        Action::Deliver(d) => Outcome::Delivered(d.data.clone()),
        Action::Refuse { reply, why } => {
            // A refusal answers the request: signed by us, same uid, back to its source.
            assert_eq!(reply.kind(), Kind::Error);
            verify_envelope(reply, &signer(ME).public_key()).expect("signed by us");
            assert_eq!(reply.source, Some(Address::new(ME, None)));
            let Some(Message::Error(e)) = &reply.message else {
                unreachable!()
            };
            assert_eq!(e.code, why.code());
            Outcome::Refused(e.code, e.message.clone())
        }
        Action::Drop(d) => Outcome::Dropped(d.reason),
        Action::Answer(a) => Outcome::Answered(a.from.twin, a.body.clone()),
        Action::Send(env) => {
            verify_envelope(env, &signer(ME).public_key()).expect("signed by us");
            Outcome::Sent(env.payload.clone())
        }
        Action::NotSent { why, instead, .. } => Outcome::NotSent(why.code(), instead.is_some()),
        Action::Ignore => Outcome::Ignored,
    }
}

fn refused(code: u32, text: &str) -> Outcome {
    Outcome::Refused(code, text.into())
}

#[test]
fn requests_from_other_twins_are_delivered_or_refused_with_the_original_codes() {
    let cipher_from = |from: u32, payload: Vec<u8>| {
        let mut env = request_from(from, &format!("cipher-{from}"));
        env.payload = Some(Payload::Cipher(payload));
        sign(env, from)
    };
    let bad_signature = "invalid envelope signature: ";
    let cases: Vec<(&str, Envelope, Directory, Outcome, Vec<u32>)> = vec![
        (
            "plain",
            request_from(ALICE, "plain"),
            Directory::new(),
            Outcome::Delivered(b"hi".to_vec()),
            vec![ALICE],
        ),
        (
            "encrypted end to end",
            cipher_from(ALICE, shared(ALICE, ME).encrypt(b"secret")),
            Directory::new(),
            Outcome::Delivered(b"secret".to_vec()),
            vec![ALICE],
        ),
        (
            "expired: refused before any lookup",
            {
                let mut env = request_from(ALICE, "expired");
                env.timestamp = NOW - 100;
                env.expiration = 10;
                sign(env, ALICE)
            },
            Directory::new(),
            refused(102, "envelope validation error: message has expired"),
            vec![],
        ),
        (
            "unknown twin",
            request_from(STRANGER, "stranger"),
            Directory::new(),
            refused(103, "unknown twin id '9'"),
            vec![STRANGER],
        ),
        (
            "directory down",
            request_from(ALICE, "down"),
            Directory::down(),
            refused(
                500,
                "other: failed to get twin 2 information: twin directory unavailable: chain unreachable",
            ),
            vec![ALICE],
        ),
        (
            "altered after signing",
            {
                let mut env = request_from(ALICE, "tampered");
                env.payload = Some(Payload::Plain(b"tampered".to_vec()));
                env
            },
            Directory::new(),
            refused(104, bad_signature),
            vec![ALICE],
        ),
        (
            "forged source: claims alice, signed by bob",
            {
                let mut env = request_from(BOB, "forged");
                env.source = Some(Address::new(ALICE, None));
                sign(env, BOB)
            },
            Directory::new(),
            refused(104, bad_signature),
            vec![ALICE],
        ),
        (
            "not signed",
            {
                let mut env = request_from(ALICE, "unsigned");
                env.signature = None;
                env
            },
            Directory::new(),
            refused(104, "invalid envelope signature: message is not signed"),
            vec![ALICE],
        ),
        (
            "cipher from a twin without a public key",
            cipher_from(BOB, shared(BOB, ME).encrypt(b"secret")),
            Directory::new(),
            refused(105, "sender twin has no public key"),
            vec![BOB],
        ),
        (
            "cipher that does not decrypt",
            cipher_from(ALICE, vec![7; 64]),
            Directory::new(),
            refused(106, "e2e error: "),
            vec![ALICE],
        ),
        (
            "no source twin: dropped, not answered",
            {
                let mut env = request_from(ALICE, "sourceless");
                env.source = None;
                env
            },
            Directory::new(),
            Outcome::Dropped(DropReason::Unsigned),
            vec![],
        ),
    ];
    for (name, env, dir, expected, lookups) in cases {
        let core = core();
        let (action, looked_up) = receive(&core, env.clone(), &dir);
        let got = match outcome(&action) {
            // Texts with a variable tail are checked by prefix.
            Outcome::Refused(code, text) => match &expected {
                Outcome::Refused(_, prefix) if text.starts_with(prefix.as_str()) => {
                    Outcome::Refused(code, prefix.clone())
                }
                _ => Outcome::Refused(code, text),
            },
            other => other,
        };
        assert_eq!(got, expected, "{name}");
        assert_eq!(looked_up, lookups, "{name}: lookups");
        if let Action::Refuse { reply, why } = &action {
            assert_eq!(reply.uid, env.uid, "{name}");
            assert_eq!(
                reply.destination, env.source,
                "{name}: back to the source session"
            );
            assert_eq!(
                reply.expiration, env.expiration,
                "{name}: lives as the request"
            );
            assert_eq!(reply.timestamp, NOW, "{name}");
            assert_eq!(why.drop_reason(), expected_reason(why), "{name}");
        }
    }
}

/// The metric reason of each refusal, written out independently of `drop_reason`.
fn expected_reason(why: &ProtocolError) -> DropReason {
    match why.code() {
        102 => DropReason::Expired,
        103 | 500 => DropReason::UnknownSource,
        104 if *why == ProtocolError::Unsigned => DropReason::Unsigned,
        104 => DropReason::BadSignature,
        _ => DropReason::Crypto,
    }
}

#[test]
fn a_delivered_request_carries_its_source_command_and_payload() {
    let core = core();
    let (action, _) = receive(&core, request_from(ALICE, "d1"), &Directory::new());
    let Action::Deliver(d) = action else {
        panic!("{action:?}")
    };
    assert_eq!(d.source, Address::new(ALICE, Some("s".into())));
    assert_eq!(d.command, "svc.echo");
    assert_eq!(d.data, b"hi");
    assert_eq!(d.request.uid, "d1");
    assert_eq!(
        d.request.payload, None,
        "the plain payload is in `data` only"
    );
}

#[test]
fn a_request_uid_is_served_once_per_twin_within_its_lifetime() {
    let core = core();
    let dir = Directory::new();
    let genuine = request_from(ALICE, "dup");
    // A forgery with the same uid first: refused, and it does not burn the uid.
    let mut forged = genuine.clone();
    forged.payload = Some(Payload::Plain(b"forged".to_vec()));
    let (action, _) = receive(&core, forged, &dir);
    assert!(matches!(outcome(&action), Outcome::Refused(104, _)));
    let (action, _) = receive(&core, genuine.clone(), &dir);
    assert_eq!(outcome(&action), Outcome::Delivered(b"hi".to_vec()));
    let (action, _) = receive(&core, genuine.clone(), &dir);
    assert_eq!(outcome(&action), Outcome::Dropped(DropReason::Replayed));
    // The same uid from another twin is another request.
    let (action, _) = receive(&core, request_from(BOB, "dup"), &dir);
    assert_eq!(outcome(&action), Outcome::Delivered(b"hi".to_vec()));
    // Two copies checked at the same time (the SDK serves concurrently): one goes through.
    let copy = request_from(BOB, "concurrent");
    let (a, b) = (core.receive(copy.clone(), NOW), core.receive(copy, NOW));
    let (a, _) = run(&core, a, &dir, None);
    let (b, _) = run(&core, b, &dir, None);
    assert_eq!(outcome(&a), Outcome::Delivered(b"hi".to_vec()));
    assert_eq!(outcome(&b), Outcome::Dropped(DropReason::Replayed));
}

#[test]
fn the_replay_memory_is_bounded_and_expires_with_the_requests() {
    let core: Protocol<Ctx> = Protocol::with_memory(signer(ME), ME, 2);
    let dir = Directory::new();
    for uid in ["a", "b", "c"] {
        let (action, _) = receive(&core, request_from(ALICE, uid), &dir);
        assert_eq!(
            outcome(&action),
            Outcome::Delivered(b"hi".to_vec()),
            "{uid}"
        );
    }
    assert_eq!(core.state.lock().served.len(), 2, "bounded");
    // Past their expiry the requests are forgotten (a copy would be refused as expired).
    core.expire_calls(NOW + 3600);
    assert_eq!(core.state.lock().served.len(), 0);
}

/// A core with call "c1" to Alice and Bob.
fn calling() -> Protocol<Ctx> {
    let core = core();
    core.start_call(
        "c1".into(),
        Call::new(vec![ALICE, BOB], NOW + 30, 30, "caller"),
    );
    core
}

/// A signed answer from `from` to our call `uid`.
fn response_from(from: u32, uid: &str, payload: Payload) -> Envelope {
    let env = Envelope::response(uid.into(), Some(Address::new(ME, None)), NOW - 1, 300)
        .with_source(Address::new(from, None))
        .with_payload(payload);
    sign(env, from)
}

fn plain(data: &[u8]) -> Payload {
    Payload::Plain(data.to_vec())
}

/// An unsigned error from a relay about call `uid`.
fn relay_error(uid: &str, message: &str) -> Envelope {
    Envelope::error(
        uid.into(),
        Some(Address::new(ME, None)),
        codes::UNKNOWN_TWIN,
        message,
        NOW,
        300,
    )
}

#[test]
fn answers_are_matched_to_our_calls_and_checked() {
    let data = |d: &[u8]| AnswerBody::Data(d.to_vec());
    let cases: Vec<(&str, Envelope, Outcome, Vec<u32>)> = vec![
        (
            "genuine",
            response_from(ALICE, "c1", plain(b"ok")),
            Outcome::Answered(ALICE, data(b"ok")),
            vec![ALICE],
        ),
        (
            "encrypted",
            response_from(
                ALICE,
                "c1",
                Payload::Cipher(shared(ALICE, ME).encrypt(b"ok")),
            ),
            Outcome::Answered(ALICE, data(b"ok")),
            vec![ALICE],
        ),
        (
            "undecryptable: handed over as such",
            response_from(ALICE, "c1", Payload::Cipher(vec![1; 40])),
            Outcome::Answered(
                ALICE,
                AnswerBody::Unreadable(ProtocolError::Crypto("decryption failed".into())),
            ),
            vec![ALICE],
        ),
        (
            "cipher from a twin without a key",
            response_from(BOB, "c1", Payload::Cipher(shared(BOB, ME).encrypt(b"ok"))),
            Outcome::Answered(BOB, AnswerBody::Unreadable(ProtocolError::NoPublicKey)),
            vec![BOB],
        ),
        (
            "an error from the twin called",
            sign(
                Envelope::error(
                    "c1".into(),
                    Some(Address::new(ME, None)),
                    42,
                    "nope",
                    NOW,
                    300,
                )
                .with_source(Address::new(BOB, None)),
                BOB,
            ),
            Outcome::Answered(
                BOB,
                AnswerBody::Error {
                    code: 42,
                    message: "nope".into(),
                },
            ),
            vec![BOB],
        ),
        (
            "expired",
            {
                let mut env = response_from(ALICE, "c1", plain(b"ok"));
                env.timestamp = NOW - 400;
                sign(env, ALICE)
            },
            Outcome::Dropped(DropReason::Expired),
            vec![],
        ),
        (
            "altered after signing",
            {
                let mut env = response_from(ALICE, "c1", plain(b"ok"));
                env.payload = Some(plain(b"forged"));
                env
            },
            Outcome::Dropped(DropReason::BadSignature),
            vec![ALICE],
        ),
        (
            "forged source: claims alice, signed by carol",
            {
                let mut env = response_from(CAROL, "c1", plain(b"ok"));
                env.source = Some(Address::new(ALICE, None));
                sign(env, CAROL)
            },
            Outcome::Dropped(DropReason::BadSignature),
            vec![ALICE],
        ),
        (
            "not signed",
            {
                let mut env = response_from(ALICE, "c1", plain(b"ok"));
                env.signature = None;
                env
            },
            Outcome::Dropped(DropReason::Unsigned),
            vec![ALICE],
        ),
        (
            "from a twin the call did not go to: no lookup",
            response_from(CAROL, "c1", plain(b"ok")),
            Outcome::Dropped(DropReason::WrongSource),
            vec![],
        ),
        (
            "a response without a source (unsigned)",
            {
                let mut env = response_from(ALICE, "c1", plain(b"ok"));
                env.source = None;
                env
            },
            Outcome::Dropped(DropReason::Unsigned),
            vec![],
        ),
        (
            "a relay's unsigned error naming the twin",
            relay_error("c1", "unknown twin 3"),
            Outcome::Answered(
                BOB,
                AnswerBody::Error {
                    code: codes::UNKNOWN_TWIN,
                    message: "unknown twin 3".into(),
                },
            ),
            vec![],
        ),
        (
            "a relay's error naming no waiting twin",
            relay_error("c1", "rate limited"),
            Outcome::Answered(
                0,
                AnswerBody::Error {
                    code: codes::UNKNOWN_TWIN,
                    message: "rate limited".into(),
                },
            ),
            vec![],
        ),
        (
            "to no call of ours",
            response_from(ALICE, "other", plain(b"ok")),
            Outcome::Dropped(DropReason::Unexpected),
            vec![],
        ),
    ];
    for (name, env, expected, lookups) in cases {
        let core = calling();
        let (action, looked_up) = receive(&core, env, &Directory::new());
        let got = match outcome(&action) {
            // The crypto library's text is not ours to pin.
            Outcome::Answered(t, AnswerBody::Unreadable(ProtocolError::Crypto(_))) => {
                Outcome::Answered(
                    t,
                    AnswerBody::Unreadable(ProtocolError::Crypto("decryption failed".into())),
                )
            }
            other => other,
        };
        assert_eq!(got, expected, "{name}");
        assert_eq!(looked_up, lookups, "{name}: lookups");
        if let Action::Answer(answer) = &action {
            assert_eq!(answer.uid, "c1");
            assert_eq!(answer.call.context, "caller", "{name}");
        }
    }
}

#[test]
fn a_call_takes_one_answer_per_destination_then_is_finished() {
    let core = calling();
    let dir = Directory::new();
    let alice = response_from(ALICE, "c1", plain(b"a"));
    let (action, _) = receive(&core, alice.clone(), &dir);
    let Action::Answer(answer) = action else {
        panic!("{action:?}")
    };
    assert_eq!(answer.call.waiting, [BOB], "Bob still answers");
    let (action, looked_up) = receive(&core, alice.clone(), &dir);
    assert_eq!(outcome(&action), Outcome::Dropped(DropReason::Replayed));
    assert!(looked_up.is_empty(), "a replay costs no lookup");
    // A forged answer from Bob does not settle his part.
    let mut forged = response_from(BOB, "c1", plain(b"b"));
    forged.payload = Some(plain(b"forged"));
    let (action, _) = receive(&core, forged, &dir);
    assert_eq!(outcome(&action), Outcome::Dropped(DropReason::BadSignature));
    let (action, _) = receive(&core, response_from(BOB, "c1", plain(b"b")), &dir);
    let Action::Answer(answer) = action else {
        panic!("{action:?}")
    };
    assert!(answer.call.is_done());
    assert_eq!(core.pending_calls(), 0);
    let (action, _) = receive(&core, alice, &dir);
    assert_eq!(outcome(&action), Outcome::Dropped(DropReason::Replayed));
    let (action, _) = receive(&core, relay_error("c1", "late"), &dir);
    assert_eq!(outcome(&action), Outcome::Dropped(DropReason::Replayed));
}

#[test]
fn two_copies_of_an_answer_checked_at_the_same_time_are_taken_once() {
    let core = calling();
    let dir = Directory::new();
    let answer = response_from(ALICE, "c1", plain(b"a"));
    let (a, b) = (core.receive(answer.clone(), NOW), core.receive(answer, NOW));
    let (a, _) = run(&core, a, &dir, None);
    let (b, _) = run(&core, b, &dir, None);
    assert!(matches!(a, Action::Answer(_)), "{a:?}");
    assert_eq!(outcome(&b), Outcome::Dropped(DropReason::Replayed));
}

#[test]
fn a_relay_error_goes_to_the_only_destination_waiting() {
    let core = calling();
    let dir = Directory::new();
    let (action, _) = receive(&core, response_from(ALICE, "c1", plain(b"a")), &dir);
    assert!(matches!(action, Action::Answer(_)));
    let (action, _) = receive(&core, relay_error("c1", "offline"), &dir);
    let Action::Answer(answer) = action else {
        panic!("{action:?}")
    };
    assert_eq!(answer.from, Address::new(BOB, None));
    assert!(answer.call.is_done());
}

#[test]
fn an_answer_to_a_call_from_storage_is_matched_once_it_is_restored() {
    let core = core();
    let dir = Directory::new();
    let stored = Call::new(vec![ALICE], NOW + 30, 30, "from backlog");
    let env = response_from(ALICE, "old", plain(b"ok"));
    let step = core.receive(env.clone(), NOW);
    assert!(matches!(&step, Step::NeedCall(uid, _) if uid == "old"));
    let (action, _) = run(&core, step, &dir, Some(stored));
    let Action::Answer(answer) = action else {
        panic!("{action:?}")
    };
    assert_eq!(answer.call.context, "from backlog");
    let (action, _) = run(&core, core.receive(env, NOW), &dir, None);
    assert_eq!(outcome(&action), Outcome::Dropped(DropReason::Replayed));
}

#[test]
fn a_call_of_the_original_peer_takes_any_twin_once() {
    let core = core();
    let dir = Directory::new();
    core.start_call("legacy".into(), Call::new(Vec::new(), NOW + 300, 0, "old"));
    for (from, expected) in [
        (
            ALICE,
            Outcome::Answered(ALICE, AnswerBody::Data(b"ok".to_vec())),
        ),
        (
            BOB,
            Outcome::Answered(BOB, AnswerBody::Data(b"ok".to_vec())),
        ),
        (ALICE, Outcome::Dropped(DropReason::Replayed)),
    ] {
        let (action, _) = receive(&core, response_from(from, "legacy", plain(b"ok")), &dir);
        assert_eq!(outcome(&action), expected, "{from}");
    }
    assert_eq!(core.pending_calls(), 1, "lasts until it expires");
}

#[test]
fn expired_and_abandoned_calls_are_finished_and_their_late_answers_are_replays() {
    let core = calling();
    core.start_call("later".into(), Call::new(vec![ALICE], NOW + 100, 100, "x"));
    core.start_call(
        "gave-up".into(),
        Call::new(vec![ALICE], NOW + 100, 100, "y"),
    );
    let expired = core.expire_calls(NOW + 30);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].0, "c1");
    assert_eq!(expired[0].1.waiting, [ALICE, BOB], "nobody answered");
    core.end_call("gave-up", NOW);
    assert_eq!(core.pending_calls(), 1);
    let dir = Directory::new();
    for uid in ["c1", "gave-up"] {
        let (action, _) = receive(&core, response_from(ALICE, uid, plain(b"late")), &dir);
        assert_eq!(
            outcome(&action),
            Outcome::Dropped(DropReason::Replayed),
            "{uid}"
        );
    }
    // A destination the request could not be sent to is settled without an answer.
    let call = core.settle("later", &[ALICE], NOW).expect("our call");
    assert!(call.is_done());
    assert_eq!(core.pending_calls(), 0);
}

fn new_call() -> NewCall {
    NewCall {
        uid: "n1".into(),
        command: "svc.q".into(),
        tags: Some("t".into()),
        schema: Some("application/json".into()),
        timestamp: NOW,
        ttl: 30,
    }
}

#[test]
fn outgoing_payloads_are_encrypted_when_the_destination_has_a_key_and_never_sent_unsure() {
    let cases: Vec<(&str, u32, Directory, &str)> = vec![
        ("publishes a key: cipher", ALICE, Directory::new(), "cipher"),
        ("publishes none: plain", BOB, Directory::new(), "plain"),
        ("unknown: not sent", STRANGER, Directory::new(), "103"),
        ("directory down: not sent", ALICE, Directory::down(), "500"),
        ("unusable key: not sent", CAROL, Directory::new(), "106"),
    ];
    for (name, dst, dir, expected) in cases {
        let core = core();
        let request = core.request(&new_call(), dst, b"secret".to_vec());
        let reply = core.reply(
            "r1".into(),
            Address::new(dst, Some("sid".into())),
            Reply::Data {
                data: b"secret".to_vec(),
                schema: Some("application/json".into()),
            },
            NOW,
        );
        for (what, step) in [("request", request), ("reply", reply)] {
            let (action, looked_up) = run(&core, step, &dir, None);
            assert_eq!(looked_up, [dst], "{name} ({what})");
            let got = match (&action, outcome(&action)) {
                (Action::Send(env), Outcome::Sent(Some(Payload::Cipher(c)))) => {
                    assert_eq!(shared(dst, ME).decrypt(&c).unwrap(), b"secret");
                    assert_eq!(env.destination_twin(), dst);
                    "cipher".to_string()
                }
                (_, Outcome::Sent(Some(Payload::Plain(p)))) => {
                    assert_eq!(p, b"secret");
                    "plain".to_string()
                }
                (Action::NotSent { instead, twin, .. }, Outcome::NotSent(code, _)) => {
                    assert_eq!(*twin, dst);
                    if what == "reply" {
                        let error = instead.as_ref().expect("an error answer instead");
                        let Some(Message::Error(e)) = &error.message else {
                            panic!("{error:?}")
                        };
                        assert_eq!(e.code, code);
                        assert!(e.message.starts_with("the service's reply was not sent: "));
                        assert_eq!(error.payload, None, "nothing of the reply goes out");
                        verify_envelope(error, &signer(ME).public_key()).unwrap();
                    } else {
                        assert!(instead.is_none());
                    }
                    code.to_string()
                }
                (action, _) => panic!("{name} ({what}): {action:?}"),
            };
            assert_eq!(got, expected, "{name} ({what})");
        }
    }
}

#[test]
fn outgoing_envelopes_carry_what_they_were_built_with_and_are_signed_by_us() {
    let core = core();
    let dir = Directory::new();
    let (action, _) = run(
        &core,
        core.request(&new_call(), BOB, b"x".to_vec()),
        &dir,
        None,
    );
    let Action::Send(env) = action else {
        panic!("{action:?}")
    };
    assert_eq!(env.uid, "n1");
    assert_eq!(env.kind(), Kind::Request);
    assert_eq!((env.timestamp, env.expiration), (NOW, 30));
    assert_eq!(env.tags.as_deref(), Some("t"));
    assert_eq!(env.schema.as_deref(), Some("application/json"));
    assert_eq!(env.source, Some(Address::new(ME, None)));
    assert_eq!(env.destination, Some(Address::new(BOB, None)));
    verify_envelope(&env, &signer(ME).public_key()).unwrap();

    let to = Address::new(BOB, Some("sid".into()));
    let error = Reply::Error {
        code: 7,
        message: "no".into(),
    };
    let (action, looked_up) = run(
        &core,
        core.reply("r".into(), to.clone(), error, NOW),
        &dir,
        None,
    );
    assert!(looked_up.is_empty(), "an error answer needs no key");
    let Action::Send(env) = action else {
        panic!("{action:?}")
    };
    assert_eq!(env.kind(), Kind::Error);
    assert_eq!(env.destination, Some(to));
    assert_eq!(env.schema, None);
    assert_eq!(env.expiration, crate::direct::REPLY_TTL_SECS);
    verify_envelope(&env, &signer(ME).public_key()).unwrap();
}

#[test]
fn pings_and_pongs_from_twins_are_ignored() {
    let core = core();
    let ping = Envelope::ping("p".into(), Address::new(ME, None), NOW, 60)
        .with_source(Address::new(ALICE, None));
    let (action, looked_up) = receive(&core, ping.clone(), &Directory::new());
    assert_eq!(outcome(&action), Outcome::Ignored);
    assert!(looked_up.is_empty());
    let pong = Envelope::pong_for(&ping, NOW, 60);
    let (action, _) = receive(&core, pong, &Directory::new());
    assert_eq!(outcome(&action), Outcome::Ignored);
}

#[test]
fn huge_uids_and_commands_from_other_twins_are_refused_before_any_lookup() {
    let core = core();
    let dir = Directory::new();
    // A 1 MiB uid: refused with 102 and not remembered (nothing to keep in memory).
    let big_uid = "u".repeat(1 << 20);
    let (action, looked_up) = receive(&core, request_from(ALICE, &big_uid), &dir);
    assert!(
        matches!(outcome(&action), Outcome::Refused(102, ref m) if m.contains("uid")),
        "{:?}",
        outcome(&action)
    );
    assert!(looked_up.is_empty(), "refused before the directory lookup");
    // A uid at the bound passes.
    let (action, _) = receive(&core, request_from(ALICE, &"u".repeat(MAX_UID_LEN)), &dir);
    assert_eq!(outcome(&action), Outcome::Delivered(b"hi".to_vec()));
    // A command naming a huge (or control-character) Redis list.
    for command in ["c".repeat(MAX_COMMAND_LEN + 1), "svc\necho".to_string()] {
        let env = Envelope::request("cmd".into(), Address::new(ME, None), &command, NOW - 5, 60)
            .with_source(Address::new(ALICE, Some("s".into())))
            .with_payload(Payload::Plain(b"hi".to_vec()));
        let (action, _) = receive(&core, sign(env, ALICE), &dir);
        assert!(
            matches!(outcome(&action), Outcome::Refused(102, ref m) if m.contains("command")),
            "{:?}",
            outcome(&action)
        );
    }
}
