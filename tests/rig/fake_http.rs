//! A recording HTTP client for the engine's call backs: answers from a
//! script (then 200), and keeps every request it was asked to send.

use std::collections::VecDeque;
use std::sync::Mutex;

use antibody::sys::http::{HttpClient, JsonRequest};
use async_trait::async_trait;

#[derive(Default)]
pub struct FakeHttp {
    answers: Mutex<VecDeque<Result<u16, String>>>,
    pub requests: Mutex<Vec<JsonRequest>>,
}

impl FakeHttp {
    /// The answers to the next requests, in order; 200 after them.
    pub fn script(&self, answers: Vec<Result<u16, String>>) {
        self.answers.lock().unwrap().extend(answers);
    }

    pub fn requests(&self) -> Vec<JsonRequest> {
        self.requests.lock().unwrap().clone()
    }
}

#[async_trait]
impl HttpClient for FakeHttp {
    async fn send_json(&self, request: JsonRequest) -> Result<u16, String> {
        self.requests.lock().unwrap().push(request);
        self.answers.lock().unwrap().pop_front().unwrap_or(Ok(200))
    }
}
