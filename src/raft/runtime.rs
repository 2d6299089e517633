//! openraft's `AsyncRuntime` on madsim. openraft 0.9's `TokioRuntime` calls real tokio, which
//! has no reactor inside the simulator; this routes spawn/sleep/timeout through madsim-tokio
//! (renamed `tokio`) and randomness through madsim's seeded RNG.

use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct MadsimRuntime;

/// A timeout made of the future and a madsim sleep; the future is polled first, so a result
/// that is ready at the deadline wins (deterministically).
pub struct SimTimeout<T> {
    future: Pin<Box<T>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

#[derive(Debug)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl<R, T: Future<Output = R>> Future for SimTimeout<T> {
    type Output = Result<R, Elapsed>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        if let std::task::Poll::Ready(r) = self.future.as_mut().poll(cx) {
            return std::task::Poll::Ready(Ok(r));
        }
        self.sleep.as_mut().poll(cx).map(|()| Err(Elapsed))
    }
}

fn to_std(i: TokioInstant) -> std::time::Instant {
    i.into_std()
}

impl AsyncRuntime for MadsimRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    // madsim intercepts clock_gettime, so tokio's Instant reads simulated time.
    type Instant = TokioInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = SimTimeout<T>;
    type ThreadLocalRng = madsim::rand::GlobalRng;
    type OneshotSender<T: OptionalSend> = openraft::async_runtime::TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(to_std(deadline))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        SimTimeout {
            future: Box::pin(future),
            sleep: Box::pin(tokio::time::sleep(duration)),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        SimTimeout {
            future: Box::pin(future),
            sleep: Box::pin(Self::sleep_until(deadline)),
        }
    }

    fn is_panic(_join_error: &Self::JoinError) -> bool {
        false
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        madsim::rand::thread_rng()
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        openraft::TokioRuntime::oneshot()
    }
}
