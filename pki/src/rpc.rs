//! Signaling transactions over QUIC streams (SPEC §4): one transaction per
//! bidirectional stream: request, then response, then FIN.
//!
//! [`serve`] runs the server side of every stream a peer opens on a connection;
//! [`transact`] runs the client side (also used by NMS to push on a node's standing
//! connection). Malformed requests get an error Flag on their own stream; the
//! connection and its other streams carry on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cyphonic_proto::framing::{read_message, write_message, FrameError};
use cyphonic_proto::{Flag, Message};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

/// Largest signaling message a party accepts (Enroll carries a CSR and two
/// certificates; everything else is far smaller).
pub const MAX_SIGNALING_LEN: usize = 16 * 1024;

/// How long one side waits for the other to send its half of a transaction.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Transactions served at once on one connection; further streams wait.
pub const MAX_CONCURRENT_TRANSACTIONS: usize = 32;

/// Why a transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum TransactError {
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream failed: {0}")]
    Frame(#[from] FrameError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("peer answered with flag {0:?}")]
    Refused(Flag),
    #[error("peer answered with an unexpected {0:?} message")]
    Unexpected(cyphonic_proto::MessageType),
}

/// Open a stream, send `request`, and wait for the response.
pub async fn transact(
    conn: &quinn::Connection,
    request: &Message,
    timeout: Duration,
) -> Result<Message, TransactError> {
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_message(&mut send, request).await?;
        // Closing our half is the FIN of SPEC §4; an error here means the peer is gone,
        // which the read below reports better.
        let _ = send.shutdown().await;
        Ok::<_, TransactError>(read_message(&mut recv, MAX_SIGNALING_LEN).await?)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| TransactError::Timeout(timeout))?
}

/// Serve every stream the peer opens on `conn` with `handler` until the connection
/// closes. `handler` returns the response to send (None: send nothing, close).
pub async fn serve<H, F>(conn: quinn::Connection, handler: H)
where
    H: Fn(Message) -> F + Send + Sync + 'static,
    F: Future<Output = Option<Message>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_TRANSACTIONS));
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let read = tokio::time::timeout(
                TRANSACTION_TIMEOUT,
                read_message(&mut recv, MAX_SIGNALING_LEN),
            )
            .await;
            let reply = match read {
                Ok(Ok(request)) => handler(request).await,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "malformed signaling message");
                    e.reply().map(|r| r.with_flag(Flag::Malformed))
                }
                Err(_) => None,
            };
            if let Some(reply) = reply {
                let _ = write_message(&mut send, &reply).await;
            }
            let _ = send.shutdown().await;
        });
    }
}

/// The answer to a request that is refused with `flag` (echoes its Transaction ID
/// and ID; the body is an ACK).
pub fn refusal(request: &Message, flag: Flag) -> Message {
    Message::response_to(request, flag, cyphonic_proto::Body::Ack)
}
