//! Handlers for incoming calls, by command name. The same [`Router`] serves calls through a
//! direct relay session ([`crate::sdk::Client::serve`]) or through a gateway's local Redis
//! ([`crate::local_client::LocalClient::serve`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rmb_proto::{codes, Address};

/// The error code a caller gets for a command the router has no handler for.
pub const UNKNOWN_COMMAND_CODE: u32 = codes::OTHER;

/// A call as a handler sees it: already verified and decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The calling twin (and its session id, if any).
    pub source: Address,
    /// The command called.
    pub command: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The payload schema, if the caller gave one.
    pub schema: Option<String>,
}

/// An error answer from a handler: the caller receives it as an error envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("error {code}: {message}")]
pub struct HandlerError {
    /// The error code.
    pub code: u32,
    /// What went wrong, for the caller.
    pub message: String,
}

impl HandlerError {
    /// An error with `code` and `message`.
    pub fn new(code: u32, message: impl Into<String>) -> HandlerError {
        HandlerError {
            code,
            message: message.into(),
        }
    }
}

/// What a handler returns: the response payload or an error answer.
pub type HandlerResult = Result<Vec<u8>, HandlerError>;

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

/// Something that answers calls. Any `async` closure `Fn(Incoming) -> HandlerResult` is one.
pub trait Handler: Send + Sync + 'static {
    /// Answers one call.
    fn call(&self, request: Incoming) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, request: Incoming) -> HandlerFuture {
        Box::pin(self(request))
    }
}

/// Handlers by command name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Router {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("commands", &self.commands())
            .finish()
    }
}

impl Router {
    /// A router with no handlers.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds (or replaces) the handler of `command`.
    pub fn route(mut self, command: &str, handler: impl Handler) -> Router {
        self.handlers.insert(command.to_string(), Arc::new(handler));
        self
    }

    /// The commands served, sorted.
    pub fn commands(&self) -> Vec<String> {
        let mut commands: Vec<String> = self.handlers.keys().cloned().collect();
        commands.sort();
        commands
    }

    /// Runs the handler of the request's command, at most `limit` long; an unknown command
    /// is answered with [`UNKNOWN_COMMAND_CODE`].
    pub async fn handle(&self, request: Incoming, limit: Duration) -> HandlerResult {
        let Some(handler) = self.handlers.get(&request.command).cloned() else {
            return Err(HandlerError::new(
                UNKNOWN_COMMAND_CODE,
                format!("unknown command: {}", request.command),
            ));
        };
        let command = request.command.clone();
        match tokio::time::timeout(limit, handler.call(request)).await {
            Ok(result) => result,
            Err(_) => Err(HandlerError::new(
                codes::OTHER,
                format!("handler for {command} did not finish in time"),
            )),
        }
    }
}

/// Why a call did not return a payload.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer arrived in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The remote twin (or a relay) answered with an error.
    #[error("remote error {code}: {message}")]
    Remote {
        /// The error code.
        code: u32,
        /// The error message.
        message: String,
    },
    /// The call was not sent: the destination could not be looked up in the twin directory
    /// (a payload never goes plain to a twin that may publish an encryption key) or is
    /// unknown, or its key is unusable. `code` is the original's (500, 103, 106).
    #[error("not sent ({code}): {message}")]
    NotSent {
        /// The error code.
        code: u32,
        /// Why.
        message: String,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// The local Redis failed (local API client).
    #[error("local redis: {0}")]
    Redis(String),
    /// An answer that cannot be read.
    #[error("invalid answer: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_by_command_and_refuses_unknown_ones() {
        let router = Router::new()
            .route("echo", |req: Incoming| async move { Ok(req.data) })
            .route("fail", |_req: Incoming| async move {
                Err(HandlerError::new(42, "nope"))
            });
        let call = |command: &str| Incoming {
            source: Address::new(1, None),
            command: command.to_string(),
            data: b"x".to_vec(),
            schema: None,
        };
        let limit = Duration::from_secs(5);
        assert_eq!(router.handle(call("echo"), limit).await, Ok(b"x".to_vec()));
        assert_eq!(
            router.handle(call("fail"), limit).await,
            Err(HandlerError::new(42, "nope"))
        );
        let unknown = router.handle(call("other"), limit).await.unwrap_err();
        assert_eq!(unknown.code, UNKNOWN_COMMAND_CODE);
        assert!(unknown.message.contains("unknown command: other"));
        assert_eq!(router.commands(), ["echo", "fail"]);
    }
}
