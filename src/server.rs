//! `tokengate serve`: builds the pingora server from a validated [`Config`] — the forwarding service (our
//! [`Engine`] app on pingora's listeners), the admin
//! service, the index with its sync and usage-flush threads, the access log writer and the SIGHUP reloader
//! — runs it until a signal, then stops the background threads and flushes usage one last time.
//!
//! Signals: SIGTERM stops gracefully (listeners close, in-flight requests get `grace_period`), SIGINT
//! stops at once, SIGQUIT hands the listening sockets to a new process started with `serve --upgrade`
//! (pingora's zero-downtime upgrade), SIGHUP re-reads the configuration file. All four are caught from the
//! start, before any listener opens.

use crate::clock;
use crate::config::Config;
use crate::gateway::throttle::Throttle;
use crate::ops::admin::{Admin, AdminListener};
use crate::shutdown::Shutdown;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::tokens::index::Index;
use crate::tokens::store::{Location, Store};
use crate::tokens::sync;
use crate::transport::tls::tickets::TicketKeys;
use crate::transport::{tls, Engine, Load, Table, TlsListener};
use anyhow::Context;
use arc_swap::ArcSwap;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a fast shutdown (SIGINT) waits for pingora's server to stop before the process exits anyway.
const FAST_EXIT: Duration = Duration::from_secs(2);

/// Everything the running gateway shares between its services.
pub struct State {
    pub config: Config,
    /// Where the tokens live (the store URL, if any, parsed once).
    pub location: Location,
    pub index: Arc<Index>,
    pub metrics: Arc<Metrics>,
    pub table: Arc<ArcSwap<Table>>,
    /// The TLS listener's configuration (certificates, versions, client CA), swapped on reload.
    pub tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// The session ticket keys shared through the store (`[tls] session_tickets`).
    pub ticket_keys: Option<Arc<TicketKeys>>,
}

impl State {
    /// Opens the store (creating an SQLite database on first run; migrating either store) and loads the
    /// whole index. A store that cannot be reached is an error: a gateway never serves an empty index.
    pub fn load(config: Config) -> anyhow::Result<State> {
        clock::start();
        let t = Instant::now();
        let location = Location::from_config(&config.store)
            .with_context(|| format!("{}: [store]", config.file.display()))?;
        let mut store = Store::open(&location).with_context(|| {
            format!(
                "cannot open the token store {}; not serving without the tokens",
                location.describe()
            )
        })?;
        let (count, max_id) = store.token_counts()?;
        drop(store);
        // Sized for what is there now (the map rounds up to a power of two, which leaves room to grow).
        let index = Arc::new(Index::with_capacity(count + 1024));
        index.set_retention(config.gateway.revoked_retention);
        index.reserve_ids(max_id);
        let n = index
            .load_from(&location)
            .context("loading tokens into the index")?;
        log::info!(
            "index: loaded {n} tokens from {} in {:?}",
            location.describe(),
            t.elapsed()
        );
        index
            .health
            .last_sync
            .store(clock::now() as i64, std::sync::atomic::Ordering::Relaxed);
        for r in index.roles_in_use() {
            if !config.roles.contains_key(&r) {
                // Fail closed: the role grants nothing until it is defined again.
                log::error!(
                    "{}: [roles]: {r:?} is used by tokens but not defined; it grants nothing",
                    config.file.display()
                );
            }
        }
        let metrics = Metrics::new();
        let table = Arc::new(ArcSwap::from_pointee(Table::new(&config, &metrics, None)?));
        let ticket_keys = match &config.tls {
            Some(t) if t.session_tickets => {
                let keys = TicketKeys::new(t.ticket_lifetime);
                // The first key now (made by the first node that needs one), so the first
                // handshakes get tickets; a failure is not fatal (full handshakes until the
                // background refresh succeeds).
                let loaded = Store::open(&location)
                    .map_err(|e| e.to_string())
                    .and_then(|mut store| tls::tickets::rotate_once(&keys, &mut store));
                if let Err(e) = loaded {
                    log::warn!("TLS ticket keys: {e}; resumption starts once they load");
                }
                Some(keys)
            }
            _ => None,
        };
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(ArcSwap::from(tls::edge_config(
                t,
                None,
                ticket_keys.as_ref(),
            )?))),
            None => None,
        };
        Ok(State {
            config,
            location,
            index,
            metrics,
            table,
            tls,
            ticket_keys,
        })
    }
}

/// Re-reads the configuration file and swaps the route table (routes, servers, scopes, header rules,
/// trusted proxies, upstream TLS) and the TLS listener's certificates atomically. In-flight requests keep the
/// table they started with; established TLS connections keep their certificate. An invalid file (or a
/// certificate that does not load) changes nothing. Settings that need a restart (listeners, store,
/// threads) are reported, not applied.
pub fn reload(
    path: &std::path::Path,
    current: &Config,
    table: &ArcSwap<Table>,
    edge: Option<&ArcSwap<rustls::ServerConfig>>,
    ticket_keys: Option<&Arc<TicketKeys>>,
    metrics: &Metrics,
    index: &Index,
) -> anyhow::Result<Config> {
    let new = Config::load(path)?;
    // A role that tokens use must stay defined: dropping it would silently take their access away.
    let missing: Vec<String> = index
        .roles_in_use()
        .into_iter()
        .filter(|r| !new.roles.contains_key(r))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "{}: [roles]: {} used by tokens but not defined (revoke those tokens first, or keep the role)",
            path.display(),
            missing
                .iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Everything is built before anything is swapped: a bad certificate refuses the whole reload.
    // Servers that stay (same route, address and settings) keep their connections and health.
    let new_table = Table::new(&new, metrics, Some(&table.load()))?;
    let new_edge = match (edge, &new.tls) {
        (Some(current), Some(t)) => Some((
            current,
            tls::edge_config(t, Some(&current.load()), ticket_keys)?,
        )),
        _ => None,
    };
    let restart_needed: Vec<&str> = [
        (
            "gateway.listen",
            new.gateway.listen != current.gateway.listen,
        ),
        (
            "tls.listen",
            new.tls.as_ref().map(|t| &t.listen) != current.tls.as_ref().map(|t| &t.listen),
        ),
        ("admin.listen", new.admin.listen != current.admin.listen),
        (
            "admin.trusted_user_header / trusted_proxies",
            new.admin.trusted_user_header != current.admin.trusted_user_header
                || new.admin.trusted_proxies != current.admin.trusted_proxies,
        ),
        ("store", new.store != current.store),
        (
            "tls.session_tickets / tls.ticket_lifetime",
            new.tls.as_ref().map(|t| (t.session_tickets, t.ticket_lifetime))
                != current
                    .tls
                    .as_ref()
                    .map(|t| (t.session_tickets, t.ticket_lifetime)),
        ),
        (
            "gateway.threads",
            new.gateway.threads != current.gateway.threads,
        ),
        (
            "gateway.work_stealing",
            new.gateway.work_stealing != current.gateway.work_stealing,
        ),
        ("leaks", new.leaks != current.leaks),
        (
            "verify / mqtt",
            new.verify != current.verify || new.mqtt != current.mqtt,
        ),
        (
            "gateway bounds (max_connections, max_connections_per_address, max_in_flight, \
             max_in_flight_per_token, max_head_bytes, header_timeout, keepalive_timeout, body_timeout, \
             min_body_rate)",
            {
                let (a, b) = (&new.gateway, &current.gateway);
                a.max_connections != b.max_connections
                    || a.max_connections_per_address != b.max_connections_per_address
                    || a.max_in_flight != b.max_in_flight
                    || a.max_in_flight_per_token != b.max_in_flight_per_token
                    || a.max_head_bytes != b.max_head_bytes
                    || a.header_timeout != b.header_timeout
                    || a.keepalive_timeout != b.keepalive_timeout
                    || a.body_timeout != b.body_timeout
                    || a.min_body_rate != b.min_body_rate
            },
        ),
    ]
    .into_iter()
    .filter_map(|(k, changed)| changed.then_some(k))
    .collect();
    if !restart_needed.is_empty() {
        log::warn!(
            "reload: {} changed; these take effect only after a restart",
            restart_needed.join(", ")
        );
    }
    table.store(Arc::new(new_table));
    if let Some((current, config)) = new_edge {
        current.store(config);
    }
    Ok(new)
}

/// Delivers the shutdown signals caught by [`spawn_signal_thread`] to pingora's main loop.
struct EarlySignals(tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<ShutdownSignal>>);

#[async_trait::async_trait]
impl ShutdownSignalWatch for EarlySignals {
    async fn recv(&self) -> ShutdownSignal {
        self.0
            .lock()
            .await
            .recv()
            .await
            .unwrap_or(ShutdownSignal::FastShutdown)
    }
}

/// Installs the signal handlers before any service starts (pingora's own are installed only once its
/// services run, so a SIGTERM right after start-up would otherwise kill the process without a flush), and
/// handles them on one thread: SIGTERM, SIGINT and SIGQUIT go to pingora's main loop; SIGHUP reloads.
fn spawn_signal_thread(
    state: &State,
    stop: Arc<Shutdown>,
    draining: Arc<AtomicBool>,
    fast: Arc<OnceLock<Instant>>,
) -> anyhow::Result<(EarlySignals, std::thread::JoinHandle<()>)> {
    use tokio::signal::unix::{signal, SignalKind};
    let path: PathBuf = state.config.file.clone();
    let mut current = state.config.clone();
    let (table, metrics, index) = (
        state.table.clone(),
        state.metrics.clone(),
        state.index.clone(),
    );
    let edge = state.tls.clone();
    let ticket_keys = state.ticket_keys.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (mut term, mut int, mut quit, mut hup) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::quit())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    let handle = std::thread::Builder::new().name("tokengate-signals".into()).spawn(move || {
        rt.block_on(async move {
            while !stop.is_stopped() {
                tokio::select! {
                    _ = term.recv() => {
                        draining.store(true, Ordering::Relaxed);
                        let _ = tx.send(ShutdownSignal::GracefulTerminate);
                    }
                    _ = int.recv() => {
                        draining.store(true, Ordering::Relaxed);
                        let _ = fast.set(Instant::now());
                        let _ = tx.send(ShutdownSignal::FastShutdown);
                    }
                    _ = quit.recv() => {
                        draining.store(true, Ordering::Relaxed);
                        let _ = tx.send(ShutdownSignal::GracefulUpgrade);
                    }
                    _ = hup.recv() => match reload(&path, &current, &table, edge.as_deref(), ticket_keys.as_ref(), &metrics, &index) {
                        Ok(new) => {
                            log::info!("reload: {} applied ({} routes)", path.display(), new.routes.len());
                            metrics.reloads(true);
                            current = new;
                        }
                        Err(e) => {
                            log::error!("reload: refused, keeping the running configuration: {e:#}");
                            metrics.reloads(false);
                        }
                    },
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                }
            }
        })
    })?;
    Ok((EarlySignals(tokio::sync::Mutex::new(rx)), handle))
}

/// Runs the gateway until it is told to stop.
pub fn serve(config: Config, upgrade: bool) -> anyhow::Result<()> {
    if !upgrade {
        check_ports(&config)?;
    }
    let state = State::load(config)?;
    let cfg = &state.config;

    let conf = server_conf(cfg);
    let stop = Arc::new(Shutdown::default());
    let draining = Arc::new(AtomicBool::new(false));
    let fast = Arc::new(OnceLock::new());
    let (signals, signal_thread) =
        spawn_signal_thread(&state, stop.clone(), draining.clone(), fast.clone())?;
    let opt = Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let (access_log, log_writer) =
        AccessLog::start(&cfg.log, state.metrics.access_log_dropped.clone())
            .context("opening the access log")?;
    // `[leaks]`: the secret-scanning endpoint on the listeners, `POST /api/leaks`, owner notifications.
    let leaks = crate::ops::leaks::start(
        cfg.leaks.as_ref(),
        state.index.clone(),
        state.location.clone(),
        &state.metrics.registry,
        stop.clone(),
    )?;
    let tls_listener = match (&cfg.tls, &state.tls) {
        (Some(t), Some(config)) => Some(TlsListener {
            addr: t.listen.parse().context("tls.listen")?,
            config: config.clone(),
        }),
        _ => None,
    };
    // `[verify]`: its own listener and engine, over the same index, routes and limits.
    let verify_parts = cfg
        .verify
        .as_ref()
        .map(|v| (v, access_log.clone(), draining.clone()));
    let engine = Engine::new(
        cfg,
        state.index.clone(),
        state.table.clone(),
        &state.metrics,
        access_log,
        tls_listener,
        draining,
    )
    .with_door(leaks.door.clone());
    let verify = verify_parts
        .map(|(v, log, draining)| verify_service(&state, v, log, draining, engine.gate.clone()))
        .transpose()?;
    let load = engine.load();
    let mut proxy = Service::new("tokengate proxy".to_string(), engine);
    // Unbuffered: the engine reads into and writes from its own per-connection buffers. Pingora's default
    // wraps every accepted stream in a 64 KiB read buffer (and a 1460-byte write buffer): a second copy of
    // every byte, and 64 KiB of fresh memory per connection, whose page faults (huge pages zeroed) were
    // 28 % of the CPU while a thousand devices connected at once (BENCHMARKS.md "Latency tail").
    let listener = |addr: &str| ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::unbuffered());
    if let Some(listen) = &cfg.gateway.listen {
        proxy.add_listener(listener(listen));
    }
    if let Some(t) = &cfg.tls {
        // A plain TCP listener: the engine runs the handshake itself, under `header_timeout` and inside
        // the connection limit (see transport::tls).
        proxy.add_listener(listener(&t.listen));
    }
    server.add_service(proxy);
    if let Some(verify) = verify {
        server.add_service(verify);
    }

    server.add_service(admin_service(&state, load, &leaks));

    let background = spawn_background(&state, &stop)?;

    log_serving(cfg);
    // Pingora runs on its own thread so that a fast shutdown can never hang the exit: pingora 0.9 with
    // one runtime per thread (`work_stealing = false`) sometimes spins forever in an accept loop whose
    // listener belonged to a runtime that was shut down first (3 of 10 SIGINTs with 2 threads). After a
    // SIGINT it gets FAST_EXIT; then usage is flushed and the process exits without it.
    run_server(server, signals, &fast)?;

    // The proxy has stopped: stop the background threads; the usage thread flushes once more on its way
    // out, and the access log writer drains its queue once the proxy (its sender) is gone.
    stop.stop();
    for thread in background {
        let _ = thread.join();
    }
    let _ = signal_thread.join();
    if let Some(w) = log_writer {
        // The writer ends when the proxy service (owning the sender) is dropped with its runtime; give
        // it a moment to write its queue, but never hang the exit on it.
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        while !w.is_finished() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    log::info!("tokengate stopped; usage flushed");
    Ok(())
}

/// Binds each configured port once: pingora retries a taken port forever in the background; this fails
/// at once with a clear message.
fn check_ports(config: &Config) -> anyhow::Result<()> {
    let tls_listen = config.tls.as_ref().map(|t| &t.listen);
    for (key, addr) in [
        ("gateway.listen", config.gateway.listen.as_ref()),
        ("tls.listen", tls_listen),
        ("admin.listen", Some(&config.admin.listen)),
        ("verify.listen", config.verify.as_ref().map(|v| &v.listen)),
    ] {
        let Some(addr) = addr else { continue };
        std::net::TcpListener::bind(addr.as_str()).with_context(|| {
            format!("{}: {key}: cannot listen on {addr}", config.file.display())
        })?;
    }
    Ok(())
}

/// Pingora's server settings.
fn server_conf(cfg: &Config) -> ServerConf {
    ServerConf {
        threads: cfg.gateway.threads,
        // Without stealing, each worker thread runs its own runtime whose run queue is first in, first
        // out: with a thousand busy connections none waits behind the others for long. The stealing
        // runtime (tokio 1.54) overflows its 256-slot local queue into a global queue it takes one task
        // from per ~200 µs of work, so connections that land there wait far longer than the rest: the
        // 2x-nginx p99 at 1,000 connections (BENCHMARKS.md "Latency tail").
        work_stealing: cfg.gateway.work_stealing,
        // Pingora sleeps this long on SIGTERM whatever is in flight; keep it short and configurable.
        grace_period_seconds: Some(cfg.gateway.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        upgrade_sock: cfg.gateway.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    }
}

/// The line that says the gateway is up, and where.
fn log_serving(cfg: &Config) {
    log::info!(
        "tokengate {} serving on {}{} (admin on {}), {} routes, {} worker threads",
        env!("CARGO_PKG_VERSION"),
        cfg.gateway
            .listen
            .as_deref()
            .unwrap_or("(no plain listener)"),
        cfg.tls
            .as_ref()
            .map(|t| format!(", TLS on {}", t.listen))
            .unwrap_or_default(),
        cfg.admin.listen,
        cfg.routes.len(),
        cfg.gateway.threads
    );
}

/// The verify listener's service (`[verify]`): an engine that answers forward-auth and MQTT questions
/// with the same decision, index, route table (so the same rate-limit buckets) and connection bounds as
/// the gateway's, and forwards nothing.
fn verify_service(
    state: &State,
    v: &crate::config::verify::VerifyConfig,
    access_log: AccessLog,
    draining: Arc<AtomicBool>,
    gate: Arc<crate::gateway::Gate>,
) -> anyhow::Result<Service<Engine>> {
    let cfg = &state.config;
    // `[verify.tls]`: the same handshake as the TLS listener's (its certificates are read at start; a
    // change needs a restart). The asking proxy's certificate is not a device's: the decision reads the
    // client certificate from XFCC only.
    let tls = match &v.tls {
        Some(t) => Some(TlsListener {
            addr: v.listen.parse().context("verify.listen")?,
            config: Arc::new(ArcSwap::from(tls::edge_config(t, None, None)?)),
        }),
        None => None,
    };
    let verify = crate::transport::verify::Verify {
        trusted: v.trusted_proxies.clone(),
        cache_seconds: v.cache_seconds,
        path_prefix: v.path_prefix.clone(),
        mqtt: Arc::new(crate::gateway::mqtt::Mqtt::new(
            &cfg.mqtt,
            &cfg.roles,
            state.index.clone(),
        )),
        metrics: crate::telemetry::verify::VerifyMetrics::register(&state.metrics.registry),
    };
    let engine = Engine::new(
        cfg,
        state.index.clone(),
        state.table.clone(),
        &state.metrics,
        access_log,
        tls,
        draining,
    )
    .with_verify(Arc::new(verify), gate);
    let mut service = Service::new("tokengate verify".to_string(), engine);
    service.add_listener(ListenerConfig::tcp(&v.listen).l4_buffer(L4BufferSettings::unbuffered()));
    Ok(service)
}

/// The admin listener's service: `/healthz` (with the gateway's `load`), `/metrics`, the token API and
/// page, `/api/leaks`, behind its connection cap and head bounds.
fn admin_service(
    state: &State,
    load: Load,
    leaks: &crate::ops::leaks::Wiring,
) -> Service<AdminListener> {
    let cfg = &state.config;
    let admin = Admin::new(
        state.index.clone(),
        state.metrics.clone(),
        state.location.clone(),
    )
    .with_routes(state.table.clone())
    .with_leaks(leaks.taker.clone())
    .with_load(load)
    .with_access(cfg.admin.clone())
    .with_throttle(Throttle::new(
        cfg.throttle.max_failures,
        cfg.throttle.window.as_secs(),
        cfg.throttle.max_clients,
    ));
    let admin = AdminListener::new(admin, cfg.admin.max_connections, cfg.gateway.header_timeout);
    let mut admin_service = Service::new("tokengate admin".to_string(), admin);
    admin_service.add_tcp(&cfg.admin.listen);
    admin_service
}

/// The background threads: index sync, usage flush, the rate-limit sweep, health checks; all end on
/// `stop`.
fn spawn_background(
    state: &State,
    stop: &Arc<Shutdown>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let cfg = &state.config;
    let sync = {
        let (index, path, every, stop) = (
            state.index.clone(),
            state.location.clone(),
            cfg.gateway.sync_interval,
            stop.clone(),
        );
        std::thread::Builder::new()
            .name("tokengate-sync".into())
            .spawn(move || sync::run_sync(index, path, every, stop))?
    };
    let flush = {
        let (index, path, every, stop) = (
            state.index.clone(),
            state.location.clone(),
            cfg.gateway.usage_flush_interval,
            stop.clone(),
        );
        std::thread::Builder::new()
            .name("tokengate-usage".into())
            .spawn(move || sync::run_usage_flush(index, path, every, stop))?
    };
    // Rate-limit buckets that are full again say nothing a fresh one would not: dropped every few
    // seconds, so idle tokens and users cost no memory.
    let sweep = {
        let (table, stop) = (state.table.clone(), stop.clone());
        std::thread::Builder::new()
            .name("tokengate-limits".into())
            .spawn(move || {
                while !stop.wait(std::time::Duration::from_secs(5)) {
                    table.load().routes.limiters.sweep(clock::mono_nanos());
                }
            })?
    };

    // Active health checks and re-resolution of the routes' servers.
    let health = {
        let (table, stop) = (state.table.clone(), stop.clone());
        std::thread::Builder::new()
            .name("tokengate-health".into())
            .spawn(move || crate::transport::health::run(table, stop))?
    };

    let mut threads = vec![sync, flush, sweep, health];
    // The TLS session ticket keys: rotated in the store and loaded, every few seconds.
    if let Some(keys) = &state.ticket_keys {
        let (keys, location, stop) = (keys.clone(), state.location.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("tokengate-ticket-keys".into())
                .spawn(move || {
                    crate::transport::tls::tickets::keep_current(keys, location, stop)
                })?,
        );
    }
    Ok(threads)
}

/// Runs pingora until its shutdown, or until a fast shutdown has waited [`FAST_EXIT`].
fn run_server(
    server: Server,
    signals: EarlySignals,
    fast: &OnceLock<Instant>,
) -> anyhow::Result<()> {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("tokengate-server".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(signals),
            });
            let _ = done_tx.send(());
        })?;
    loop {
        use std::sync::mpsc::RecvTimeoutError;
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                if fast.get().is_some_and(|t| t.elapsed() > FAST_EXIT) {
                    log::warn!("fast shutdown: the server did not stop within {FAST_EXIT:?}; exiting without it");
                    break;
                }
            }
        }
    }

    Ok(())
}
