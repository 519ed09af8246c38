//! `tokengate serve`: builds the pingora server from a validated [`Config`] — the proxy service, the admin
//! service, the index with its sync and usage-flush threads — runs it until a signal, then stops the
//! background threads and flushes usage one last time.
//!
//! Signals (pingora's): SIGTERM stops gracefully (listeners close, in-flight requests get
//! `grace_period`), SIGINT stops at once, SIGQUIT hands the listening sockets to a new process started
//! with `serve --upgrade`.

use crate::admin::Admin;
use crate::clock;
use crate::config::Config;
use crate::index::{self, Index, Stop};
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::routes::RouteTable;
use crate::store::Store;
use anyhow::Context;
use arc_swap::ArcSwap;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Instant;

/// Everything the running gateway shares between its services.
pub struct State {
    pub config: Config,
    pub index: Arc<Index>,
    pub metrics: Arc<Metrics>,
    pub routes: Arc<ArcSwap<RouteTable>>,
}

impl State {
    /// Opens the store (creating it on first run) and loads the whole index.
    pub fn load(config: Config) -> anyhow::Result<State> {
        clock::start();
        let t = Instant::now();
        let store = Store::open(&config.store.path)?;
        let index = Arc::new(Index::new());
        let n = index
            .sync_from(&store)
            .context("loading tokens into the index")?;
        log::info!(
            "index: loaded {n} tokens from {} in {:?}",
            config.store.path.display(),
            t.elapsed()
        );
        index
            .health
            .last_sync
            .store(clock::now() as i64, std::sync::atomic::Ordering::Relaxed);
        let metrics = Metrics::new();
        let routes = Arc::new(ArcSwap::from_pointee(RouteTable::new(&config, &metrics)));
        Ok(State {
            config,
            index,
            metrics,
            routes,
        })
    }
}

/// Runs the gateway until it is told to stop.
pub fn serve(config: Config, upgrade: bool) -> anyhow::Result<()> {
    let state = State::load(config)?;
    let cfg = &state.config;

    let conf = ServerConf {
        threads: cfg.gateway.threads,
        work_stealing: true,
        // Pingora sleeps this long on SIGTERM whatever is in flight; keep it short and configurable.
        grace_period_seconds: Some(cfg.gateway.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        upgrade_sock: std::env::temp_dir()
            .join("tokengate-upgrade.sock")
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let gateway = Gateway {
        routes: state.routes.clone(),
        index: state.index.clone(),
        unrouted: state.metrics.route("none"),
        trusted_proxies: cfg.gateway.trusted_proxies.clone(),
    };
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "tokengate proxy",
    );
    proxy.add_tcp(&cfg.gateway.listen);
    server.add_service(proxy);

    let admin = Admin::new(
        state.index.clone(),
        state.metrics.clone(),
        cfg.store.path.clone(),
    );
    let mut admin_service = Service::new("tokengate admin".to_string(), HttpServer::new_app(admin));
    admin_service.add_tcp(&cfg.admin.listen);
    server.add_service(admin_service);

    let stop = Arc::new(Stop::default());
    let sync = {
        let (index, path, every, stop) = (
            state.index.clone(),
            cfg.store.path.clone(),
            cfg.gateway.sync_interval,
            stop.clone(),
        );
        std::thread::Builder::new()
            .name("tokengate-sync".into())
            .spawn(move || index::run_sync(index, path, every, stop))?
    };
    let flush = {
        let (index, path, every, stop) = (
            state.index.clone(),
            cfg.store.path.clone(),
            cfg.gateway.usage_flush_interval,
            stop.clone(),
        );
        std::thread::Builder::new()
            .name("tokengate-usage".into())
            .spawn(move || index::run_usage_flush(index, path, every, stop))?
    };

    log::info!(
        "tokengate {} serving on {} (admin on {}), {} routes, {} worker threads",
        env!("CARGO_PKG_VERSION"),
        cfg.gateway.listen,
        cfg.admin.listen,
        cfg.routes.len(),
        cfg.gateway.threads
    );
    server.run(RunArgs::default());

    // The proxy has stopped: stop the background threads; the usage thread flushes once more on its way out.
    stop.stop();
    let _ = sync.join();
    let _ = flush.join();
    log::info!("tokengate stopped; usage flushed");
    Ok(())
}
