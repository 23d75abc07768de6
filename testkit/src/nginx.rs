//! Debian's nginx, started for one test on a free loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, free_port, TempDir};

/// An nginx in the foreground, its files in a test's folder; stopped on drop.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    /// Its configuration file (for `nginx -c CONF -s reload`).
    pub conf: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
}

impl Nginx {
    /// Writes `dir/nginx.conf` (pid, logs and temp files in `dir`) whose `http` block holds
    /// what `http` makes of the chosen port, starts nginx with it, and waits until it
    /// listens.
    pub fn start(dir: &TempDir, http: impl FnOnce(u16) -> String) -> Self {
        let port = free_port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::create_dir_all(dir.path().join("tmp")).expect("nginx temp folder");
        let conf = dir.write(
            "nginx.conf",
            &format!(
                "daemon off;\nworker_processes 1;\npid {pid};\nerror_log {log} warn;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n\
                 fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n{http}\n}}\n",
                pid = path("nginx.pid"),
                log = path("error.log"),
                tmp = path("tmp"),
                http = http(port),
            ),
        );
        let child = Command::new("nginx")
            .args(["-c", conf.to_str().expect("utf8"), "-p", dir.str()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (Debian's nginx-light; .ci/run installs it)");
        let nginx = Self { child, conf, port };
        eventually(Duration::from_secs(10), "nginx listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
