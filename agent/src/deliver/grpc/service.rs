//! `tokenwatch.v1.AlertService`: each subscriber gets its own task reading
//! the delivery log from its resume point, so a slow subscriber only ever
//! waits on itself, never on the kernel reader or other subscribers. At
//! most [`MAX_SUBSCRIBERS`] at once: each holds a task, a buffer and (when
//! it starts from an old sequence) a read of the log, so a client opening
//! streams without end is refused rather than served into exhaustion.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tokenwatch_proto::v1::{
    alert_service_server::AlertService, subscribe_response::Item, Gap, SubscribeRequest, SubscribeResponse,
};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::filter::matches;
use crate::deliver::spool::Spool;

/// Alerts read from the log per step.
const BATCH: usize = 256;
/// Responses buffered per subscriber before its task waits for it.
const BUFFER: usize = 64;
/// The most subscribers served at once; one more is refused with
/// `RESOURCE_EXHAUSTED` until one goes.
pub const MAX_SUBSCRIBERS: usize = 64;

/// The service over one delivery log.
pub struct AlertStream {
    spool: Spool,
    cancel: CancellationToken,
    slots: Arc<Semaphore>,
}

impl AlertStream {
    /// Serves `spool` until `cancel`.
    pub fn new(spool: Spool, cancel: CancellationToken) -> Self {
        AlertStream { spool, cancel, slots: Arc::new(Semaphore::new(MAX_SUBSCRIBERS)) }
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AlertService for AlertStream {
    type SubscribeStream = Responses;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Responses>, Status> {
        let request = request.into_inner();
        super::filter::validate(&request).map_err(Status::invalid_argument)?;
        let slot = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_SUBSCRIBERS} subscribers are connected, the most this agent serves at once; retry later"
            ))
        })?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let (spool, cancel) = (self.spool.clone(), self.cancel.clone());
        tracing::debug!(after = request.after_sequence, follow = request.follow, "subscriber connected");
        tokio::spawn(async move {
            let _slot = slot;
            let _counted = Subscribed::new();
            if let Err(status) = feed(spool, request, &tx, cancel).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Counts a subscriber in the `tokenwatch_grpc_subscribers` gauge while it
/// lives, however its feed ends.
struct Subscribed;

impl Subscribed {
    fn new() -> Self {
        crate::metrics::global().subscribers.inc();
        Subscribed
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        crate::metrics::global().subscribers.dec();
    }
}

/// Sends what the subscriber asked for until it goes away, the agent stops
/// or (without `follow`) the log is read to its end.
async fn feed(
    spool: Spool,
    request: SubscribeRequest,
    tx: &mpsc::Sender<Result<SubscribeResponse, Status>>,
    cancel: CancellationToken,
) -> Result<(), Status> {
    let mut after = request.after_sequence;
    let mut appended = spool.subscribe();
    loop {
        let reader = spool.clone();
        let batch = tokio::task::spawn_blocking(move || reader.read_after(after, BATCH))
            .await
            .map_err(|e| Status::internal(format!("reading the delivery log: {e}")))?
            .map_err(|e| Status::internal(format!("reading the delivery log: {e}")))?;
        if let Some((first, last)) = batch.lost {
            let gap = Gap { first_sequence: first, last_sequence: last };
            if tx.send(Ok(SubscribeResponse { item: Some(Item::Gap(gap)) })).await.is_err() {
                return Ok(());
            }
            after = after.max(last);
        }
        let caught_up = batch.alerts.is_empty();
        for alert in batch.alerts {
            after = alert.sequence;
            if matches(&request, &alert)
                && tx.send(Ok(SubscribeResponse { item: Some(Item::Alert(alert)) })).await.is_err()
            {
                return Ok(());
            }
        }
        if caught_up {
            if !request.follow {
                return Ok(());
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tx.closed() => return Ok(()),
                changed = appended.changed() => if changed.is_err() { return Ok(()) },
            }
        }
    }
}
