//! Constructors for the envelopes every component builds: requests and pings that start an
//! exchange, and the responses, errors and pongs that answer one.
//!
//! An answer keeps the uid of what it answers and goes back to its source, twin and session
//! (`connection`), so a relay delivers it to the session that asked. Answers carry no tags,
//! schema or payload of the request (a pong is the exception: like the original relay's, it
//! is the ping turned around, tags and schema kept). Nothing here signs: an unsigned envelope
//! has no source (relay errors); a peer adds its address with [`Envelope::with_source`] and
//! signs what it built.

use crate::types::envelope::{Message, Payload};
use crate::types::{Address, Envelope, Error, Ping, Pong, Request, Response};

impl Envelope {
    /// A request calling `command` on `to`, stamped `now` and living `ttl` seconds.
    pub fn request(uid: String, to: Address, command: &str, now: u64, ttl: u64) -> Envelope {
        let request = Request {
            command: command.to_string(),
        };
        Envelope::addressed(uid, Some(to), Message::Request(request), now, ttl)
    }

    /// An envelope ping to `to` (twin 0: the relay itself), stamped `now`.
    pub fn ping(uid: String, to: Address, now: u64, ttl: u64) -> Envelope {
        Envelope::addressed(uid, Some(to), Message::Ping(Ping {}), now, ttl)
    }

    /// An empty response answering `request`: its uid, back to its source. Add the payload
    /// and schema with [`Envelope::with_payload`] and [`Envelope::with_schema`].
    pub fn response_to(request: &Envelope, now: u64, ttl: u64) -> Envelope {
        Envelope::response(request.uid.clone(), request.source.clone(), now, ttl)
    }

    /// An error answering `request`: its uid, back to its source.
    pub fn error_reply(
        request: &Envelope,
        code: u32,
        message: impl Into<String>,
        now: u64,
        ttl: u64,
    ) -> Envelope {
        Envelope::error(
            request.uid.clone(),
            request.source.clone(),
            code,
            message,
            now,
            ttl,
        )
    }

    /// An empty response with `uid` to `to`: for an answer built from the uid and address
    /// alone (a local service's reply document, which carries no request).
    pub fn response(uid: String, to: Option<Address>, now: u64, ttl: u64) -> Envelope {
        Envelope::addressed(uid, to, Message::Response(Response {}), now, ttl)
    }

    /// An error with `uid` to `to`: for an answer built from the uid and address alone (a
    /// relay answering a session, a local service's reply document).
    pub fn error(
        uid: String,
        to: Option<Address>,
        code: u32,
        message: impl Into<String>,
        now: u64,
        ttl: u64,
    ) -> Envelope {
        let error = Error {
            code,
            message: message.into(),
        };
        Envelope::addressed(uid, to, Message::Error(error), now, ttl)
    }

    /// The pong answering `ping`: the ping turned around (source and destination swapped,
    /// uid, tags and schema kept), without payload or signature, stamped `now`.
    pub fn pong_for(ping: &Envelope, now: u64, ttl: u64) -> Envelope {
        Envelope {
            uid: ping.uid.clone(),
            tags: ping.tags.clone(),
            timestamp: now,
            expiration: ttl,
            source: ping.destination.clone(),
            destination: ping.source.clone(),
            message: Some(Message::Pong(Pong {})),
            schema: ping.schema.clone(),
            federation: ping.federation.clone(),
            relays: ping.relays.clone(),
            ..Default::default()
        }
    }

    /// The envelope with `source` as its sender (a peer's own address, before signing).
    pub fn with_source(mut self, source: Address) -> Envelope {
        self.source = Some(source);
        self
    }

    /// The envelope carrying `payload`.
    pub fn with_payload(mut self, payload: Payload) -> Envelope {
        self.payload = Some(payload);
        self
    }

    /// The envelope with `schema` (the payload's format, `application/json` by convention).
    pub fn with_schema(mut self, schema: Option<String>) -> Envelope {
        self.schema = schema;
        self
    }

    /// The envelope with `tags`.
    pub fn with_tags(mut self, tags: Option<String>) -> Envelope {
        self.tags = tags;
        self
    }

    fn addressed(
        uid: String,
        to: Option<Address>,
        message: Message,
        now: u64,
        ttl: u64,
    ) -> Envelope {
        Envelope {
            uid,
            timestamp: now,
            expiration: ttl,
            destination: to,
            message: Some(message),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    /// A signed request from twin 7 (session "s1") to twin 9, with everything set.
    fn request() -> Envelope {
        Envelope::request(
            "u-1".into(),
            Address::new(9, Some("s9".into())),
            "calc.add",
            1_000,
            60,
        )
        .with_source(Address::new(7, Some("s1".into())))
        .with_tags(Some("t".into()))
        .with_schema(Some("application/json".into()))
        .with_payload(Payload::Cipher(vec![1, 2, 3]))
    }

    #[test]
    fn a_request_carries_what_it_was_built_with() {
        let env = request();
        assert_eq!(env.uid, "u-1");
        assert_eq!(env.kind(), Kind::Request);
        assert_eq!(
            env.message,
            Some(Message::Request(Request {
                command: "calc.add".into()
            }))
        );
        assert_eq!((env.timestamp, env.expiration), (1_000, 60));
        assert_eq!(env.source, Some(Address::new(7, Some("s1".into()))));
        assert_eq!(env.destination, Some(Address::new(9, Some("s9".into()))));
        assert_eq!(env.tags.as_deref(), Some("t"));
        assert_eq!(env.schema.as_deref(), Some("application/json"));
        assert_eq!(env.payload, Some(Payload::Cipher(vec![1, 2, 3])));
        assert_eq!(env.signature, None);
    }

    #[test]
    fn answers_keep_the_uid_go_back_to_the_source_session_and_carry_nothing_of_the_request() {
        let req = request();
        let me = Address::new(9, Some("s9".into()));
        let response = Envelope::response_to(&req, 2_000, 300).with_source(me.clone());
        let error = Envelope::error_reply(&req, 102, "expired", 2_000, 5).with_source(me.clone());
        for (answer, kind, ttl) in [(&response, Kind::Response, 300), (&error, Kind::Error, 5)] {
            assert_eq!(answer.kind(), kind);
            assert_eq!(answer.uid, "u-1");
            assert_eq!(answer.destination, Some(Address::new(7, Some("s1".into()))));
            assert_eq!(answer.source, Some(me.clone()));
            assert_eq!((answer.timestamp, answer.expiration), (2_000, ttl));
            assert_eq!(answer.tags, None, "{kind:?}");
            assert_eq!(answer.schema, None, "{kind:?}");
            assert_eq!(answer.payload, None, "{kind:?}");
            assert_eq!(answer.signature, None, "{kind:?}");
        }
        assert_eq!(
            error.message,
            Some(Message::Error(Error {
                code: 102,
                message: "expired".into()
            }))
        );
    }

    #[test]
    fn answers_built_from_a_uid_and_an_address_have_no_source_until_given_one() {
        let to = Address::new(4, Some("sid".into()));
        let error = Envelope::error("u-2".into(), Some(to.clone()), 110, "offline", 50, 300);
        assert_eq!(error.uid, "u-2");
        assert_eq!(
            error.source, None,
            "a relay's error is unsigned and has no source"
        );
        assert_eq!(error.destination, Some(to.clone()));
        assert_eq!((error.timestamp, error.expiration), (50, 300));
        let response = Envelope::response("u-3".into(), Some(to.clone()), 51, 300)
            .with_schema(Some("application/json".into()))
            .with_payload(Payload::Plain(b"ok".to_vec()));
        assert_eq!(response.kind(), Kind::Response);
        assert_eq!(response.destination, Some(to));
        assert_eq!(response.payload, Some(Payload::Plain(b"ok".to_vec())));
        assert_eq!(response.schema.as_deref(), Some("application/json"));
    }

    #[test]
    fn an_answer_to_an_envelope_without_a_source_has_no_destination() {
        let mut req = request();
        req.source = None;
        assert_eq!(Envelope::error_reply(&req, 1, "x", 1, 1).destination, None);
        assert_eq!(Envelope::response_to(&req, 1, 1).destination, None);
    }

    #[test]
    fn a_pong_is_the_ping_turned_around_without_payload_or_signature() {
        let mut ping = Envelope::ping("p-1".into(), Address::new(0, None), 1_000, 60)
            .with_source(Address::new(7, Some("s1".into())))
            .with_tags(Some("t".into()))
            .with_payload(Payload::Plain(b"hello".to_vec()));
        ping.signature = Some(vec![0x65; 65]);
        ping.relays = vec!["relay.example".into()];
        assert_eq!(ping.kind(), Kind::Ping);
        let pong = Envelope::pong_for(&ping, 1_005, 300);
        assert_eq!(pong.kind(), Kind::Pong);
        assert_eq!(pong.uid, "p-1");
        assert_eq!(pong.source, Some(Address::new(0, None)));
        assert_eq!(pong.destination, Some(Address::new(7, Some("s1".into()))));
        assert_eq!((pong.timestamp, pong.expiration), (1_005, 300));
        assert_eq!(pong.tags.as_deref(), Some("t"));
        assert_eq!(pong.relays, ["relay.example"]);
        assert_eq!(pong.payload, None);
        assert_eq!(pong.signature, None);
    }
}
