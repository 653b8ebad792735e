//! A Redis server of a test's own (`redis-server`, which `scripts/services` installs), for
//! tests that stop and restart it; tests that only need a Redis use the shared one with a key
//! prefix of their own.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TestRedis {
    pub port: u16,
    pub url: String,
    child: Option<Child>,
}

impl TestRedis {
    /// Starts a server without persistence on a free port; panics saying what is missing.
    pub fn start() -> TestRedis {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        drop(listener);
        let mut redis = TestRedis { port, url: format!("redis://127.0.0.1:{port}/"), child: None };
        redis.restart();
        redis
    }

    /// Stops the server (SIGKILL) and starts a new, empty one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/services installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
