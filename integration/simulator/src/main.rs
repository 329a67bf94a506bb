//! `looper-sim --config <file.json> [--items <bank.json>] [--listen 127.0.0.1:PORT]`

use std::io::Write;
use std::process::ExitCode;

use looper_sim::{Config, Server};

const USAGE: &str =
    "usage: looper-sim --config <file.json> [--items <bank.json>] [--listen 127.0.0.1:PORT]";
const DEFAULT_LISTEN: &str = "127.0.0.1:8081";

struct Args {
    config: String,
    items: Option<String>,
    listen: String,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut config = None;
    let mut listen = None;
    let mut items = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--config" => &mut config,
            "--listen" => &mut listen,
            "--items" => &mut items,
            _ => return Err(format!("unknown argument `{arg}`")),
        };
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        if slot.replace(value).is_some() {
            return Err(format!("{flag} given twice"));
        }
    }
    Ok(Some(Args {
        config: config.ok_or("--config is required")?,
        items,
        listen: listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
    }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("looper-sim: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(&args.config, args.items.as_deref()) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("looper-sim: {msg}");
            return ExitCode::from(2);
        }
    };
    let addr: std::net::SocketAddr = match args.listen.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!(
                "looper-sim: --listen expects IP:PORT, got `{}`",
                args.listen
            );
            return ExitCode::from(2);
        }
    };
    let server = match Server::bind(config, addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("looper-sim: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let bound = match server.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("looper-sim: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "looper-sim listening on {bound}");
    let _ = out.flush();
    server.run();
    ExitCode::SUCCESS
}
