//! Real Redis for tests: standalone servers and a Redis Cluster (masters with replicas),
//! started from the `redis-server` binary on free loopback ports and removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_addr;

/// A `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    args: Vec<String>,
    tls: Option<TlsFiles>,
    unix_socket: Option<PathBuf>,
    dir: tempfile::TempDir,
}

/// A test certificate authority and a server certificate for 127.0.0.1 / localhost.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA certificate clients must trust.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Makes a fresh CA and server certificate in `dir` with the `openssl` command.
    pub fn generate(dir: &std::path::Path) -> TlsFiles {
        let run = |args: &[&str]| {
            let ok = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "openssl {args:?} failed");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=rmb-test-ca",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap_or_else(|e| panic!("writing ext.cnf: {e}"));
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

impl RedisServer {
    /// Starts a standalone server with persistence off.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (for example `--requirepass`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let port = free_addr().port();
        let mut server = RedisServer {
            child: None,
            port,
            args: extra.iter().map(|s| s.to_string()).collect(),
            tls: None,
            unix_socket: None,
            dir,
        };
        server.launch();
        server
    }

    /// Starts a standalone server that also listens on a Unix socket in its directory (see
    /// [`RedisServer::unix_url`]).
    pub fn start_unix() -> RedisServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let socket = dir.path().join("redis.sock");
        let mut server = RedisServer {
            child: None,
            port: free_addr().port(),
            args: vec![
                "--unixsocket".into(),
                socket.display().to_string(),
                "--unixsocketperm".into(),
                "700".into(),
            ],
            tls: None,
            unix_socket: Some(socket),
            dir,
        };
        server.launch();
        server
    }

    /// Starts a server that accepts only TLS connections, with `tls`'s certificate.
    pub fn start_tls(tls: &TlsFiles) -> RedisServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let port = free_addr().port();
        let path = |p: &PathBuf| p.display().to_string();
        let mut server = RedisServer {
            child: None,
            port,
            args: vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                path(&tls.cert),
                "--tls-key-file".into(),
                path(&tls.key),
                "--tls-ca-cert-file".into(),
                path(&tls.ca),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            tls: Some(tls.clone()),
            unix_socket: None,
            dir,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server (install the redis-server package): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .cli(&["ping"])
                .is_some_and(|r| r.contains("PONG") || r.contains("NOAUTH"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `<scheme>:///path/to/redis.sock` (for example `unix` or `redis+unix`) for a server
    /// started with [`RedisServer::start_unix`].
    pub fn unix_url(&self, scheme: &str) -> String {
        let socket = self
            .unix_socket
            .as_ref()
            .unwrap_or_else(|| panic!("not started with start_unix"));
        format!("{scheme}://{}", socket.display())
    }

    /// Runs `redis-cli` against this server; returns its output, or `None` if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        match &self.tls {
            None => redis_cli(self.port, args),
            Some(tls) => {
                let ca = tls.ca.display().to_string();
                let mut all = vec!["--tls", "--cacert", ca.as_str()];
                all.extend_from_slice(args);
                redis_cli(self.port, &all)
            }
        }
    }

    /// Kills the server (SIGKILL), keeping its port and directory for [`RedisServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Freezes the server (SIGSTOP): it keeps its data but answers nothing, like a network
    /// partition.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The working directory (cluster config lives here).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `redis-cli -p port args…` with a timeout.
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// A Redis Cluster of `masters` masters with `replicas` replicas each.
pub struct RedisCluster {
    /// Every node, masters and replicas.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes and forms the cluster with `redis-cli --cluster create`.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let total = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..total)
            .map(|_| {
                // The bus port defaults to port + 10000; name a free one instead.
                let bus = free_addr().port().to_string();
                RedisServer::start_with(&[
                    "--cluster-port",
                    &bus,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        let replicas_s = replicas.to_string();
        args.extend(["--cluster-replicas", &replicas_s, "--cluster-yes"]);
        if redis_cli(nodes[0].port, &args).is_none() {
            panic!("redis-cli --cluster create failed");
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster.wait_replicas(masters * replicas, Duration::from_secs(30));
        cluster
    }

    /// Waits until every running node reports `cluster_state:ok` and every slot is served.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let ok = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                n.cli(&["cluster", "info"]).is_some_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                })
            });
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis cluster did not become healthy");
    }

    /// Waits until `count` replicas are attached.
    pub fn wait_replicas(&self, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.replica_count() < count {
            if Instant::now() > deadline {
                panic!("redis cluster replicas did not attach");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The URL the relay takes: `redis-cluster://host:port?node=host:port&…`.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", n.port));
        }
        url
    }

    /// Indexes of the nodes that are masters serving slots now.
    pub fn masters(&self) -> Vec<usize> {
        self.node_lines()
            .iter()
            .filter(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"))
            .filter_map(|f| self.index_of(&f[1]))
            .collect()
    }

    /// How many nodes are replicas now.
    pub fn replica_count(&self) -> usize {
        self.node_lines()
            .iter()
            .filter(|f| f.len() > 2 && f[2].contains("slave") && !f[2].contains("fail"))
            .count()
    }

    /// `CLUSTER NODES` of the first running node, split into fields.
    fn node_lines(&self) -> Vec<Vec<String>> {
        let text = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .and_then(|n| n.cli(&["cluster", "nodes"]))
            .unwrap_or_default();
        text.lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    }

    fn index_of(&self, addr: &str) -> Option<usize> {
        let port: u16 = addr.split(['@', ':']).nth(1)?.parse().ok()?;
        self.nodes.iter().position(|n| n.port == port)
    }
}
