//! The identity of a session: a twin and its optional session id.

use std::fmt;
use std::sync::Arc;

use rmb_proto::Address;

/// `(twin, sid)`: what a session registers as and what an envelope is addressed to. An
/// envelope without `destination.connection` goes to the twin's session without a sid.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct SessionKey {
    /// The twin id.
    pub twin: u32,
    /// The session id, if the twin runs several sessions.
    pub sid: Option<Arc<str>>,
}

impl SessionKey {
    /// A key for `twin` with an optional session id. An empty session id is the same as
    /// none, as it is in the signature challenge.
    pub fn new(twin: u32, sid: Option<&str>) -> Self {
        SessionKey {
            twin,
            sid: sid.filter(|s| !s.is_empty()).map(Arc::from),
        }
    }

    /// The key an address names.
    pub fn from_address(addr: &Address) -> Self {
        SessionKey::new(addr.twin, addr.connection.as_deref())
    }

    /// Whether `addr` names exactly this session.
    pub fn matches(&self, addr: Option<&Address>) -> bool {
        addr.is_some_and(|a| {
            a.twin == self.twin
                && a.connection.as_deref().filter(|s| !s.is_empty()) == self.sid.as_deref()
        })
    }

    /// The address of this session, for envelopes the relay sends to it.
    pub fn to_address(&self) -> Address {
        Address::new(self.twin, self.sid.as_deref().map(str::to_string))
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sid {
            Some(sid) => write!(f, "{}:{}", self.twin, sid),
            None => write!(f, "{}", self.twin),
        }
    }
}
