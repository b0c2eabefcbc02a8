//! How systemd's jobs ended, heard once per bus connection.
//!
//! Subscribing to `JobRemoved` for each restart costs three round trips
//! to the bus daemon before `RestartUnit` can even be sent (`AddMatch` for
//! the signal, `AddMatch` for the owner of `org.freedesktop.systemd1` and
//! `GetNameOwner`: zbus follows a well-known name's owner). Instead one
//! subscription lives as long as the connection, and its listener posts
//! every job's end here, where the restart that asked for the job picks it
//! up. A job can end before its caller has even read `RestartUnit`'s
//! reply, so ends nobody waits for yet are kept for a while.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use tokio::sync::oneshot;

use super::systemd::JobOutcome;

/// Ends of jobs nobody waits for (yet) that are kept: the system's other
/// jobs pass through here too, and a caller looks only microseconds after
/// its job was queued.
const UNCLAIMED_KEPT: usize = 1024;

/// A job's end, as `JobRemoved` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    /// The job's object path.
    pub job: String,
    pub outcome: JobOutcome,
}

#[derive(Default)]
struct Board {
    waiting: HashMap<String, oneshot::Sender<JobOutcome>>,
    unclaimed: VecDeque<JobEnd>,
    /// The subscription ended (the bus went away): nothing more will come.
    closed: bool,
}

/// What a caller gets for its job.
pub enum JobWait {
    /// The job had already ended.
    Ended(JobOutcome),
    /// Resolves when it ends; an error if the subscription ends first.
    Pending(oneshot::Receiver<JobOutcome>),
    /// The subscription has ended: this job's end will not be heard.
    Deaf,
}

#[derive(Clone, Default)]
pub struct JobBoard(Arc<Mutex<Board>>);

impl JobBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        crate::sync::lock(&self.0)
    }

    /// Where to learn how `job` (an object path) ended.
    pub fn wait_for(&self, job: &str) -> JobWait {
        let mut board = self.lock();
        if let Some(at) = board.unclaimed.iter().position(|e| e.job == job) {
            let end = board.unclaimed.remove(at).expect("found");
            return JobWait::Ended(end.outcome);
        }
        if board.closed {
            return JobWait::Deaf;
        }
        let (tx, rx) = oneshot::channel();
        board.waiting.insert(job.to_string(), tx);
        JobWait::Pending(rx)
    }

    /// Posts a job's end to its waiter, or keeps it for one to come.
    pub fn post(&self, end: JobEnd) {
        let mut board = self.lock();
        if let Some(waiter) = board.waiting.remove(&end.job) {
            let _ = waiter.send(end.outcome);
            return;
        }
        if board.unclaimed.len() == UNCLAIMED_KEPT {
            board.unclaimed.pop_front();
        }
        board.unclaimed.push_back(end);
    }

    /// The subscription ended: every waiter learns that its job's end will
    /// not be heard (its receiver errs), and so does every later caller.
    pub fn close(&self) {
        let mut board = self.lock();
        board.closed = true;
        board.waiting.clear();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Posts every end `ends` yields, then closes the board.
    pub async fn listen(self, ends: impl Stream<Item = JobEnd>) {
        let mut ends = std::pin::pin!(ends);
        while let Some(end) = ends.next().await {
            self.post(end);
        }
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(job: u32, result: &str) -> JobEnd {
        JobEnd {
            job: format!("/org/freedesktop/systemd1/job/{job}"),
            outcome: JobOutcome {
                job_id: job,
                result: result.into(),
            },
        }
    }

    #[tokio::test]
    async fn a_waiter_gets_its_own_jobs_end_and_no_other() {
        let board = JobBoard::default();
        let JobWait::Pending(rx) = board.wait_for("/org/freedesktop/systemd1/job/7") else {
            panic!("nothing has ended yet");
        };
        board.post(end(6, "done"));
        board.post(end(7, "failed"));
        assert_eq!(rx.await.unwrap(), end(7, "failed").outcome);
        // Job 6 nobody asked for is kept for whoever asks.
        assert!(matches!(
            board.wait_for("/org/freedesktop/systemd1/job/6"),
            JobWait::Ended(o) if o.result == "done"
        ));
    }

    #[test]
    fn a_job_that_ended_before_its_caller_asked_is_still_found_once() {
        let board = JobBoard::default();
        board.post(end(9, "done"));
        assert!(matches!(
            board.wait_for("/org/freedesktop/systemd1/job/9"),
            JobWait::Ended(o) if o.job_id == 9
        ));
        assert!(matches!(
            board.wait_for("/org/freedesktop/systemd1/job/9"),
            JobWait::Pending(_)
        ));
    }

    #[test]
    fn only_the_latest_unclaimed_ends_are_kept() {
        let board = JobBoard::default();
        for job in 0..(UNCLAIMED_KEPT as u32 + 10) {
            board.post(end(job, "done"));
        }
        assert!(matches!(
            board.wait_for("/org/freedesktop/systemd1/job/0"),
            JobWait::Pending(_)
        ));
        assert!(matches!(
            board.wait_for("/org/freedesktop/systemd1/job/1033"),
            JobWait::Ended(_)
        ));
    }

    #[tokio::test]
    async fn when_the_subscription_ends_waiters_and_later_callers_are_told() {
        let board = JobBoard::default();
        let JobWait::Pending(rx) = board.wait_for("/org/freedesktop/systemd1/job/1") else {
            panic!("pending");
        };
        board
            .clone()
            .listen(futures_util::stream::iter([end(2, "done")]))
            .await;
        assert!(rx.await.is_err(), "the waiter learns its job went unheard");
        assert!(board.is_closed());
        assert!(matches!(
            board.wait_for("/org/freedesktop/systemd1/job/3"),
            JobWait::Deaf
        ));
        // What was heard before the end can still be claimed.
        assert!(matches!(
            board.wait_for("/org/freedesktop/systemd1/job/2"),
            JobWait::Ended(_)
        ));
    }
}
