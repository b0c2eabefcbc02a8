//! A recording HTTP client for the engine's call backs: answers from a
//! script (then 200), and keeps every request it was asked to send.

use std::collections::VecDeque;
use std::sync::Mutex;

use antibody::sys::http::{HttpClient, JsonRequest};
use async_trait::async_trait;

type Answer = Result<u16, String>;
type Picker = Box<dyn Fn(&JsonRequest) -> Option<Answer> + Send>;

#[derive(Default)]
pub struct FakeHttp {
    answers: Mutex<VecDeque<Answer>>,
    /// Asked before the script: an answer for requests it picks.
    by_request: Mutex<Option<Picker>>,
    pub requests: Mutex<Vec<JsonRequest>>,
}

impl FakeHttp {
    /// The answers to the next requests, in order; 200 after them.
    pub fn script(&self, answers: Vec<Result<u16, String>>) {
        self.answers.lock().unwrap().extend(answers);
    }

    /// Answers the requests `pick` picks itself, whatever the script says.
    pub fn answer_by(&self, pick: impl Fn(&JsonRequest) -> Option<Answer> + Send + 'static) {
        *self.by_request.lock().unwrap() = Some(Box::new(pick));
    }

    pub fn requests(&self) -> Vec<JsonRequest> {
        self.requests.lock().unwrap().clone()
    }
}

#[async_trait]
impl HttpClient for FakeHttp {
    async fn send_json(&self, request: JsonRequest) -> Result<u16, String> {
        let picked = self
            .by_request
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|pick| pick(&request));
        self.requests.lock().unwrap().push(request);
        if let Some(answer) = picked {
            return answer;
        }
        self.answers.lock().unwrap().pop_front().unwrap_or(Ok(200))
    }
}
