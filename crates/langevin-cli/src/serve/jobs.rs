//! The job queue: one worker thread per device runs one job at a time, in order; every job
//! publishes its state as a [`Snapshot`] on a watch channel (what the event stream sends).
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};

use serde::Serialize;
use tokio::sync::watch;

use super::work::Task;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl State {
    pub fn finished(self) -> bool {
        matches!(self, State::Done | State::Failed | State::Cancelled)
    }
}

/// What a client sees of a job.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub id: u64,
    pub kind: &'static str,
    pub state: State,
    /// Jobs ahead of this one (0 once it runs).
    pub position: usize,
    /// 0..=1.
    pub progress: f64,
    /// URLs of the finished images, in order.
    pub images: Vec<String>,
    pub error: Option<String>,
}

pub struct Job {
    pub id: u64,
    pub client: String,
    /// Taken by the worker when the job starts, so finished jobs hold no images.
    pub task: Mutex<Option<Task>>,
    pub cancel: AtomicBool,
    pub snap: watch::Sender<Snapshot>,
}

impl Job {
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        self.snap.send_modify(f);
    }
}

/// Finished jobs kept for late readers; older ones are forgotten (memory stays bounded).
const KEEP_FINISHED: usize = 256;

#[derive(Default)]
struct Inner {
    waiting: VecDeque<Arc<Job>>,
    all: HashMap<u64, Arc<Job>>,
    finished: VecDeque<u64>,
    next_id: u64,
}

pub struct Queue {
    inner: Mutex<Inner>,
    wake: Condvar,
    /// Most jobs waiting at once.
    pub max_waiting: usize,
}

/// Why a job was not queued.
pub struct Full(pub usize);

impl Queue {
    pub fn new(max_waiting: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            wake: Condvar::new(),
            max_waiting,
        }
    }

    /// Queue `task` for `client`; refuses when `max_waiting` jobs already wait.
    pub fn push(&self, client: String, task: Task) -> Result<Arc<Job>, Full> {
        let mut q = self.inner.lock().unwrap();
        if q.waiting.len() >= self.max_waiting {
            return Err(Full(q.waiting.len()));
        }
        q.next_id += 1;
        let id = q.next_id;
        let (snap, _) = watch::channel(Snapshot {
            id,
            kind: task.kind(),
            state: State::Queued,
            position: q.waiting.len(),
            progress: 0.0,
            images: vec![],
            error: None,
        });
        let job = Arc::new(Job {
            id,
            client,
            task: Mutex::new(Some(task)),
            cancel: AtomicBool::new(false),
            snap,
        });
        q.waiting.push_back(job.clone());
        q.all.insert(id, job.clone());
        self.wake.notify_one();
        Ok(job)
    }

    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.inner.lock().unwrap().all.get(&id).cloned()
    }

    /// Raise the job's flag; a waiting job is finished at once, a running one stops at its
    /// next network evaluation. Returns false for unknown jobs.
    pub fn cancel(&self, id: u64) -> bool {
        let mut q = self.inner.lock().unwrap();
        let Some(job) = q.all.get(&id).cloned() else {
            return false;
        };
        job.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(i) = q.waiting.iter().position(|j| j.id == id) {
            q.waiting.remove(i);
            job.task.lock().unwrap().take();
            job.update(|s| s.state = State::Cancelled);
            Self::renumber(&q);
            Self::retire(&mut q, id);
        }
        true
    }

    /// Block until a job waits, take it and mark it running.
    pub fn next(&self) -> Arc<Job> {
        let mut q = self.inner.lock().unwrap();
        loop {
            if let Some(job) = q.waiting.pop_front() {
                job.update(|s| {
                    s.state = State::Running;
                    s.position = 0;
                });
                Self::renumber(&q);
                return job;
            }
            q = self.wake.wait(q).unwrap();
        }
    }

    /// Record that `job` has finished (its snapshot already says how).
    pub fn finished(&self, job: &Job) {
        Self::retire(&mut self.inner.lock().unwrap(), job.id);
    }

    pub fn waiting(&self) -> usize {
        self.inner.lock().unwrap().waiting.len()
    }

    fn renumber(q: &Inner) {
        for (i, j) in q.waiting.iter().enumerate() {
            j.update(|s| s.position = i);
        }
    }

    fn retire(q: &mut Inner, id: u64) {
        q.finished.push_back(id);
        while q.finished.len() > KEEP_FINISHED {
            if let Some(old) = q.finished.pop_front() {
                q.all.remove(&old);
            }
        }
    }
}
