//! A tiny HTTP receiver on 127.0.0.1 for webhook notices and call backs:
//! it keeps every request it read and answers from a script (then
//! `200 OK`), or holds a request unanswered.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One HTTP request the server read.
#[derive(Debug, Clone)]
pub struct Hook {
    pub request_line: String,
    /// The header lines, as sent.
    pub headers: Vec<String>,
    pub body: Value,
}

impl Hook {
    /// A header's value (the name compared without case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// How the server answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// Read it and never answer (the socket stays open until the server
    /// is dropped).
    Hold,
    Status(u16),
}

pub struct HookServer {
    pub port: u16,
    hooks: Arc<Mutex<Vec<Hook>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HookServer {
    /// With `hold_first`, the first request is held; all others get 200.
    pub fn start(hold_first: bool) -> HookServer {
        let script = if hold_first {
            vec![Reply::Hold]
        } else {
            Vec::new()
        };
        HookServer::scripted(script)
    }

    /// Answers the first requests as `script` says, then 200.
    pub fn scripted(script: Vec<Reply>) -> HookServer {
        HookServer::scripted_on(
            TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"),
            script,
        )
    }

    /// The same, on a port chosen before (a receiver that comes back).
    pub fn scripted_on(listener: TcpListener, script: Vec<Reply>) -> HookServer {
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let hooks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let hooks = hooks.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                let mut script = script.into_iter();
                while !stop.load(Ordering::Relaxed) {
                    let mut stream = match listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        Err(e) => panic!("accept: {e}"),
                    };
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let Some(hook) = read_request(&mut stream) else {
                        continue;
                    };
                    hooks.lock().unwrap().push(hook);
                    let status = match script.next() {
                        Some(Reply::Hold) => {
                            held.push(stream);
                            continue;
                        }
                        Some(Reply::Status(status)) => status,
                        None => 200,
                    };
                    let _ = stream.write_all(
                        format!(
                            "HTTP/1.1 {status} Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    let _ = stream.flush();
                }
                drop(held);
            })
        };
        HookServer {
            port,
            hooks,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }

    pub fn hooks_for(&self, plan_id: &str) -> Vec<Hook> {
        self.hooks()
            .into_iter()
            .filter(|h| h.body["plan_id"] == plan_id)
            .collect()
    }

    pub fn wait_hooks_for(&self, plan_id: &str, count: usize) -> Vec<Hook> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.hooks_for(plan_id);
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "the server got {} request(s) for plan {plan_id}, expected {count}; all: {:?}",
                found.len(),
                self.hooks()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Hook> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let header_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..header_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while data.len() < header_end + length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let body_text = String::from_utf8_lossy(&data[header_end..header_end + length]).into_owned();
    let mut lines = head.lines().filter(|l| !l.is_empty());
    Some(Hook {
        request_line: lines.next().unwrap_or_default().to_string(),
        headers: lines.map(str::to_string).collect(),
        body: serde_json::from_str(&body_text).unwrap_or(Value::String(body_text)),
    })
}
