//! `jwtchat-load`: the broadcast benchmark against any running jwtchat.
//!
//! ```text
//! cargo run --release --example jwtchat-load -- --url http://127.0.0.1:3000 \
//!     --clients 1000 --senders 1 --messages 200 --payload 64
//! ```
//!
//! Logs in through `POST /auth` like a real client (the demo users, or
//! `--user`/`--password`), or, with `--secret-file`, signs its own tokens
//! for `--users` distinct users (a connect storm of thousands of users, or
//! a server with no logins such as the peer in `benches/peer-tokio.rs`).
//! It opens `--clients` WebSockets, lets the first `--senders` of them send
//! `--messages` each and times every delivery. Prints a human summary, then
//! one JSON line. With `--server-pid` it also reports the server's CPU time
//! for connecting everyone and for the run, and its resident memory.
//! `--idle SECS` instead holds the clients open and idle (with
//! `--server-pid`, reporting the server's resident memory per connection).
//! Note that a server's default message rate limit, if it has one,
//! throttles senders: start it without one to measure the server rather
//! than the limit.
//!
//! `--url` may be given more than once, for instances that share one room
//! (jwtchat's `--redis`): client `i` connects to the `i % U`th URL, the
//! senders are all on the first, and the report adds the latencies of the
//! clients on the senders' instance ("local") and on the others ("remote",
//! the cross-instance path).

#[path = "loadgen/mod.rs"]
mod loadgen;
// The binary's process set-up, for the open-file limit: each client is a
// descriptor. Not library API, so included by path.
#[allow(dead_code)]
#[path = "../src/process.rs"]
mod process;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use loadgen::Plan;

const USAGE: &str = "\
usage: jwtchat-load --url http://HOST:PORT [--url http://HOST2:PORT2 ...] [options]
  --url URL          a server to connect to; repeat it for several instances
                     of one room (jwtchat --redis): client i connects to URL
                     number i mod U, the senders to the first, and the report
                     adds \"local\" (the senders' instance) and \"remote\" (the
                     others) latencies
  --clients N        WebSocket clients to open [100]
  --senders K        how many of them send [1]
  --messages M       messages per sender [1000]
  --rate R           messages per second per sender, 0 = flat out [0]
  --window W         messages in flight per sender; 1 = ping-pong [1 for one sender, else 32]
  --payload BYTES    chat text per message (at least 20) [64]
  --readers T        threads reading the clients [1]
  --user U --password P   log in as U (default: the demo users userA..userC)
  --secret-file FILE sign tokens with the server's secret instead of logging in
  --users K          with --secret-file: K distinct users (load-00000..),
                     client i is user i mod K [1]
  --connectors T     threads opening the clients at once [1]
  --source-ips S     spread the clients over S loopback source addresses
                     (127.0.0.1..), so a server's per-IP connection cap sees
                     S hosts [loopback targets: one per 200 clients]
  --idle SECS        only hold the clients open for SECS, then report
  --server-pid PID   report the server's CPU time and resident memory (Linux /proc)";

/// Where the clients' tokens come from.
enum Credentials {
    /// `POST /auth` as each of these (username, password).
    Login(Vec<(String, String)>),
    /// Signed here with the server's secret, for this many distinct users.
    Mint { secret: Vec<u8>, users: usize },
}

struct Args {
    /// One per `--url`; the senders are on the first.
    addrs: Vec<SocketAddr>,
    plan: Plan,
    credentials: Credentials,
    connectors: usize,
    idle: Option<Duration>,
    server_pid: Option<u32>,
    source_ips: usize,
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1).collect()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("jwtchat-load: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jwtchat-load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> std::io::Result<()> {
    let limit = process::raise_open_file_limit()?;
    if (limit as usize) < args.plan.clients + 64 {
        eprintln!(
            "warning: open-file limit {limit} is below --clients {}",
            args.plan.clients
        );
    }
    let rss_before = args.server_pid.and_then(loadgen::rss_kib);

    let tokens = tokens(args)?;
    let cpu_before = args.server_pid.and_then(loadgen::cpu_seconds);
    let opening = Instant::now();
    let conns = open_clients(args, &tokens)?;
    let opened = opening.elapsed();
    println!(
        "opened {} clients in {:.2} s",
        conns.len(),
        opened.as_secs_f64()
    );
    // Let the server finish what the connections started (jwtchat sends
    // presence in 100 ms windows) before reading its CPU time.
    std::thread::sleep(Duration::from_millis(500));
    let cpu_connected = args.server_pid.and_then(loadgen::cpu_seconds);
    let connect_cpu = cpu_before.zip(cpu_connected).map(|(a, b)| b - a);
    if let Some(cpu) = connect_cpu {
        println!("server CPU for connecting them: {cpu:.2} s");
    }
    let connect = serde_json::json!({
        "clients": conns.len(),
        "seconds": loadgen::round(opened.as_secs_f64(), 3),
        "server_cpu_s": connect_cpu.map(|c| loadgen::round(c, 2)),
        "server_rss_kib": args.server_pid.and_then(loadgen::rss_kib),
    });

    if let Some(idle) = args.idle {
        std::thread::sleep(idle);
        let rss_after = args.server_pid.and_then(loadgen::rss_kib);
        report_memory(args.plan.clients, rss_before, rss_after);
        return Ok(());
    }
    let report = loadgen::run(&args.plan, conns)?;
    let run_cpu = cpu_connected
        .zip(args.server_pid.and_then(loadgen::cpu_seconds))
        .map(|(a, b)| b - a);
    println!("{}", report.human());
    if let Some(cpu) = run_cpu {
        println!("  server CPU for the run: {cpu:.2} s");
    }
    let mut json = serde_json::to_value(report.summary()).map_err(std::io::Error::other)?;
    json["connect"] = connect;
    json["server_cpu_s"] = serde_json::json!(run_cpu.map(|c| loadgen::round(c, 2)));
    println!("{json}");
    if report.lost() > 0 || report.out_of_order > 0 || !report.closed.is_empty() {
        return Err(std::io::Error::other(
            "messages were lost, reordered or refused",
        ));
    }
    Ok(())
}

/// Every client's token: logged in on every instance (each issues its own,
/// and they need not share a secret), or signed here; `result[u][k]` is
/// the `k`th token for instance `u`.
fn tokens(args: &Args) -> std::io::Result<Vec<Vec<String>>> {
    match &args.credentials {
        Credentials::Login(credentials) => args
            .addrs
            .iter()
            .map(|&addr| {
                credentials
                    .iter()
                    .map(|(user, password)| loadgen::login(addr, user, password))
                    .collect()
            })
            .collect(),
        Credentials::Mint { secret, users } => {
            let minted = (0..*users)
                .map(|u| loadgen::mint(secret, &format!("load-{u}"), &format!("load-{u:05}")))
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok(vec![minted; args.addrs.len()])
        }
    }
}

/// Opens every client, `--connectors` at a time; client `i` goes to
/// instance `i mod U` with token `i mod K` of that instance.
fn open_clients(args: &Args, tokens: &[Vec<String>]) -> std::io::Result<Vec<loadgen::Conn>> {
    let clients = args.plan.clients;
    let open = |i: usize| {
        let instance = i % args.addrs.len();
        let source = loadgen::loopback_source(i, args.source_ips);
        let tokens = &tokens[instance];
        loadgen::connect(args.addrs[instance], &tokens[i % tokens.len()], source)
            .map(|c| c.on_instance(instance))
    };
    let chunk = clients.div_ceil(args.connectors);
    let chunks = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .step_by(chunk)
            .map(|from| {
                scope.spawn(move || (from..(from + chunk).min(clients)).map(open).collect())
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("connector panicked")))
            })
            .collect::<std::io::Result<Vec<Vec<_>>>>()
    })?;
    Ok(chunks.into_iter().flatten().collect())
}

fn report_memory(clients: usize, before: Option<u64>, after: Option<u64>) {
    match (before, after) {
        (Some(before), Some(after)) => {
            let per = after.saturating_sub(before) as f64 / clients.max(1) as f64;
            println!(
                "server RSS: {before} KiB before, {after} KiB with {clients} idle clients: {per:.1} KiB per connection"
            );
            let json = serde_json::json!({
                "clients": clients,
                "rss_before_kib": before,
                "rss_after_kib": after,
                "kib_per_connection": loadgen::round(per, 2),
            });
            println!("{json}");
        }
        _ => println!(
            "{}",
            serde_json::json!({ "clients": clients, "idle": true })
        ),
    }
}

fn parse(list: Vec<String>) -> Result<Args, String> {
    let mut urls = Vec::new();
    let mut plan = Plan {
        clients: 100,
        senders: 1,
        messages: 1000,
        rate: 0,
        window: 0,
        payload: 64,
        readers: 1,
        room: None,
    };
    let (mut user, mut password) = (None, None);
    let (mut secret, mut users, mut connectors) = (None, 1, 1);
    let mut idle = None;
    let mut server_pid = None;
    let mut source_ips = None;
    let mut it = list.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|_| format!("bad number {v:?}"));
        match flag.as_str() {
            "--url" => urls.push(value()?),
            "--clients" => plan.clients = number(value()?)? as usize,
            "--senders" => plan.senders = number(value()?)? as usize,
            "--messages" => plan.messages = number(value()?)? as usize,
            "--rate" => plan.rate = number(value()?)?,
            "--window" => plan.window = number(value()?)? as usize,
            "--payload" => plan.payload = number(value()?)? as usize,
            "--readers" => plan.readers = number(value()?)? as usize,
            "--user" => user = Some(value()?),
            "--password" => password = Some(value()?),
            "--secret-file" => {
                let path = value()?;
                secret = Some(loadgen::read_secret(&path).map_err(|e| format!("{path}: {e}"))?);
            }
            "--users" => users = number(value()?)?.max(1) as usize,
            "--connectors" => connectors = number(value()?)?.max(1) as usize,
            "--idle" => idle = Some(Duration::from_secs(number(value()?)?)),
            "--server-pid" => server_pid = Some(number(value()?)? as u32),
            "--source-ips" => source_ips = Some(number(value()?)?.clamp(1, 250) as usize),
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if urls.is_empty() {
        return Err("--url is required".into());
    }
    let addrs = urls
        .iter()
        .map(|url| {
            let host = url
                .strip_prefix("http://")
                .ok_or("--url must start with http://")?
                .trim_end_matches('/');
            host.to_socket_addrs()
                .map_err(|e| format!("{host}: {e}"))?
                .next()
                .ok_or(format!("{host}: no address"))
        })
        .collect::<Result<Vec<SocketAddr>, String>>()?;
    let addr = addrs[0];
    if plan.senders > plan.clients || plan.clients == 0 {
        return Err("need 1 <= --senders <= --clients".into());
    }
    // The senders are on the first instance, which gets every U-th client.
    if plan.senders > plan.clients.div_ceil(addrs.len()) {
        return Err(format!(
            "--senders {} is more than the {} clients on the first --url",
            plan.senders,
            plan.clients.div_ceil(addrs.len())
        ));
    }
    if plan.payload < 20 {
        return Err("--payload must be at least 20 bytes (the send time)".into());
    }
    if plan.window == 0 {
        plan.window = if plan.senders == 1 { 1 } else { 32 };
    }
    let credentials = match (user, password, secret) {
        (None, None, Some(secret)) => Credentials::Mint { secret, users },
        (_, _, Some(_)) => return Err("--secret-file signs tokens; no --user".into()),
        (Some(u), Some(p), None) => Credentials::Login(vec![(u, p)]),
        (None, None, None) => Credentials::Login(
            ["A", "B", "C"]
                .iter()
                .map(|l| (format!("user{l}"), format!("password{l}")))
                .collect(),
        ),
        _ => return Err("--user and --password go together".into()),
    };
    let source_ips = source_ips.unwrap_or(if addr.ip().is_loopback() && addr.is_ipv4() {
        plan.clients.div_ceil(200).min(250)
    } else {
        1
    });
    Ok(Args {
        addrs,
        plan,
        credentials,
        connectors,
        idle,
        server_pid,
        source_ips,
    })
}
