//! Plugin configuration: parsed once per `on_configure` from JSON, fully validated, immutable.
//!
//! Every bound has a documented default and a hard maximum enforced here, so nothing a request
//! does later can exceed what the operator configured.

mod reader;
mod recipe;
pub mod routing;

use crate::router::Router;
pub use reader::ConfigError;
use reader::{ConfigResult, Node, Object};
pub(crate) use recipe::valid_step_id;
pub use recipe::{
    workflow_vars, Algorithm, Budget, Candidate, ConfidenceMethod, ConfidenceRecipe, Distribution,
    FailurePolicy, FusionRecipe, Member, PoolMember, RatingsRecipe, Recipe, RemomRecipe,
    RoleParams, Step, Worker, WorkflowsRecipe,
};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

/// Hard maxima: a configuration beyond these is refused, whatever the operator asks.
pub mod bounds {
    pub const MAX_MODELS: usize = 64;
    pub const MAX_RECIPES: usize = 64;
    pub const MAX_VIRTUAL_MODELS: usize = 64;
    pub const MAX_MODELS_PER_RECIPE: usize = 16;
    pub const MAX_CALLS: u64 = 32;
    /// ReMoM rounds and samples per round.
    pub const MAX_ROUNDS: usize = 4;
    pub const MAX_BREADTH: u64 = 16;
    pub const MAX_TIMEOUT_MS: u64 = 600_000;
    pub const MAX_DEADLINE_MS: u64 = 3_600_000;
    /// Bodies are held whole in the VM's memory (at most 1 GiB in Envoy, shared by every
    /// request on the worker), so neither client nor upstream bodies may exceed this.
    pub const MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
    pub const MAX_NAME_LEN: usize = 256;
    pub const MAX_HEADERS_PER_MODEL: usize = 32;
    pub const MAX_CONCURRENT_REQUESTS: u64 = 100_000;
    pub const MAX_RETRY_AFTER_S: u64 = 3600;
}

/// Defaults for every optional bound.
pub mod defaults {
    pub const CHAT_PATH: &str = "/v1/chat/completions";
    pub const TIMEOUT_MS: u64 = 60_000;
    pub const REQUEST_DEADLINE_MS: u64 = 120_000;
    /// Envoy's own default buffer limit; raising it also needs the route's
    /// `request_body_buffer_limit`.
    pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
    pub const MAX_UPSTREAM_BODY_BYTES: u64 = 8 * 1024 * 1024;
    /// Per VM (one per Envoy worker). At about 200 KB of VM memory for an 8-call request with
    /// small bodies, the default bounds a worker's looper state near 50 MB.
    pub const MAX_CONCURRENT_REQUESTS: u64 = 256;
    pub const RETRY_AFTER_S: u64 = 1;
}

/// Index of an upstream model in [`Config::models`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelId(pub usize);

/// Index of a recipe in [`Config::recipes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecipeId(pub usize);

/// A credential value; never printed, logged or traced.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The header a credential is sent in, e.g. `authorization: Bearer <key>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub header: String,
    pub value: Secret,
}

/// Prices in currency units per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Price {
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_million
            + completion_tokens as f64 * self.output_per_million)
            / 1_000_000.0
    }
}

/// One upstream model alias: where and how to call it.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamModel {
    pub alias: String,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub upstream_model: String,
    pub credential: Option<Credential>,
    pub extra_headers: Vec<(String, String)>,
    pub price: Price,
    pub logprobs: bool,
    pub timeout_ms: u64,
}

/// Index of a router in [`Config::routers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouterId(pub usize);

/// What a virtual model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Always this recipe (`looper/fusion`).
    Recipe(RecipeId),
    /// The recipe the router's decision names (`vllm-sr/auto`).
    Router(RouterId),
}

#[derive(Clone, Debug, PartialEq)]
pub struct VirtualModel {
    pub name: String,
    pub target: Target,
    pub description: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_deadline_ms: u64,
    pub max_upstream_body_bytes: usize,
    /// Looper requests one VM runs at once; more are handled by `overload`.
    pub max_concurrent_requests: usize,
    pub overload: Overload,
    /// The `retry-after` of the gateway's own 429 and 503 replies.
    pub retry_after_s: u64,
}

/// What happens to a looper request beyond `limits.max_concurrent_requests`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overload {
    /// 503 `gateway_overloaded` with `retry-after`.
    Reject,
    /// Answer with this `single` recipe instead (one call per model tried), outside the cap.
    Degrade(RecipeId),
}

/// Which name the `model` field of a reply shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyModelName {
    /// The virtual model the client asked for (default).
    Virtual,
    /// The alias of the upstream model that produced the final answer.
    UpstreamAlias,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub models: Vec<UpstreamModel>,
    pub recipes: Vec<Rc<Recipe>>,
    pub routers: Vec<Router>,
    /// Request headers that routing signals read (lowercase); no other header is read for
    /// routing.
    pub signal_headers: Vec<String>,
    pub virtual_models: Vec<VirtualModel>,
    pub limits: Limits,
    /// Whether a recipe's final call may stream to a streaming client, sent on as the
    /// client's own request (Envoy's route must pick the cluster from `x-looper-cluster`).
    pub stream_final_call: bool,
    /// Whether a client may ask for `looper_trace` with `x-looper-trace: 1`.
    pub trace_allowed: bool,
    pub reply_model_name: ReplyModelName,
    /// Models served by the normal Envoy route, listed by `GET /v1/models` next to the
    /// virtual ones.
    pub listed_passthrough_models: Vec<String>,
    virtual_index: HashMap<String, usize>,
    /// `vllm-sr/` for `vllm-sr/auto`: a request naming an unknown model in one of these
    /// namespaces gets a 404 instead of being passed through.
    namespaces: Vec<String>,
}

impl Config {
    /// Parses and validates the plugin configuration. `env` resolves credential environment
    /// variables (the adapter passes the VM's environment; tests pass a map).
    pub fn from_json(bytes: &[u8], env: &dyn Fn(&str) -> Option<String>) -> ConfigResult<Config> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            ConfigError::new("", format!("not valid UTF-8 (at byte {})", e.valid_up_to()))
        })?;
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?;
        parse_config(&value, env)
    }

    pub fn virtual_model(&self, name: &str) -> Option<&VirtualModel> {
        self.virtual_models.get(self.virtual_model_index(name)?)
    }

    /// Position of `name` in [`Config::virtual_models`].
    pub fn virtual_model_index(&self, name: &str) -> Option<usize> {
        self.virtual_index.get(name).copied()
    }

    /// True when `name` is not configured but sits in a virtual namespace (e.g. `vllm-sr/typo`).
    pub fn is_unknown_virtual(&self, name: &str) -> bool {
        self.virtual_model(name).is_none() && self.namespaces.iter().any(|ns| name.starts_with(ns))
    }

    pub fn model(&self, id: ModelId) -> Option<&UpstreamModel> {
        self.models.get(id.0)
    }

    pub fn recipe(&self, id: RecipeId) -> Option<&Rc<Recipe>> {
        self.recipes.get(id.0)
    }

    pub fn router(&self, id: RouterId) -> Option<&Router> {
        self.routers.get(id.0)
    }
}

fn parse_config(value: &Value, env: &dyn Fn(&str) -> Option<String>) -> ConfigResult<Config> {
    let root = Node::root(value).object()?;
    root.deny_unknown(&[
        "models",
        "recipes",
        "virtual_models",
        "limits",
        "trace",
        "response",
        "passthrough_models",
        "namespaces",
        "routers",
        "stream_final_call",
    ])?;

    let models = parse_models(&root.required("models")?, env)?;
    let alias_index: HashMap<&str, ModelId> = models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.alias.as_str(), ModelId(i)))
        .collect();
    let recipes = recipe::parse_recipes(&root.required("recipes")?, &alias_index, &models)?;
    let recipe_index: HashMap<&str, RecipeId> = recipes
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), RecipeId(i)))
        .collect();
    let mut signal_headers = Vec::new();
    let routers = match root.field("routers") {
        Some(field) => routing::parse_routers(&field, &recipe_index, &mut signal_headers)?,
        None => Vec::new(),
    };
    let router_index: HashMap<&str, RouterId> = routers
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), RouterId(i)))
        .collect();
    let virtual_models = parse_virtual_models(
        &root.required("virtual_models")?,
        &recipe_index,
        &router_index,
    )?;
    let limits = parse_limits(root.field("limits"), &recipe_index, &recipes)?;

    let stream_final_call = root.opt_bool("stream_final_call")?.unwrap_or(false);
    let mut trace_allowed = false;
    if let Some(trace) = root.field("trace") {
        let trace = trace.object()?;
        trace.deny_unknown(&["allow"])?;
        trace_allowed = trace.opt_bool("allow")?.unwrap_or(false);
    }

    let mut reply_model_name = ReplyModelName::Virtual;
    if let Some(response) = root.field("response") {
        let response = response.object()?;
        response.deny_unknown(&["model"])?;
        if let Some(field) = response.field("model") {
            reply_model_name = match field.string()? {
                "virtual" => ReplyModelName::Virtual,
                "upstream" => ReplyModelName::UpstreamAlias,
                _ => return Err(field.error("must be \"virtual\" or \"upstream\"")),
            };
        }
    }

    let mut listed_passthrough_models = Vec::new();
    if let Some(list) = root.field("passthrough_models") {
        for item in list.elements()? {
            let name = item.non_empty_string(bounds::MAX_NAME_LEN)?;
            listed_passthrough_models.push(name.to_string());
        }
    }

    let virtual_index: HashMap<String, usize> = virtual_models
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.clone(), i))
        .collect();
    let namespaces = match root.field("namespaces") {
        Some(list) => {
            let mut namespaces = Vec::new();
            for item in list.elements()? {
                let ns = item.non_empty_string(bounds::MAX_NAME_LEN)?;
                if !ns.ends_with('/') {
                    return Err(item.error("a namespace ends with '/' (e.g. \"vllm-sr/\")"));
                }
                namespaces.push(ns.to_string());
            }
            namespaces
        }
        None => {
            let mut derived: Vec<String> = virtual_models
                .iter()
                .filter_map(|v| v.name.split_once('/').map(|(ns, _)| format!("{ns}/")))
                .collect();
            crate::stable_sort::sort_by(&mut derived, |a, b| a.cmp(b));
            derived.dedup();
            derived
        }
    };
    for (i, name) in listed_passthrough_models.iter().enumerate() {
        if virtual_index.contains_key(name) || namespaces.iter().any(|ns| name.starts_with(ns)) {
            return Err(ConfigError::new(
                format!("passthrough_models[{i}]"),
                format!(
                    "`{name}` is in a virtual namespace ({}), so requests for it would get a 404; \
                     set `namespaces` to the prefixes the plugin owns",
                    namespaces.join(", ")
                ),
            ));
        }
    }
    check_metric_names("models", models.iter().map(|m| m.alias.as_str()))?;
    check_metric_names(
        "virtual_models",
        virtual_models.iter().map(|v| v.name.as_str()),
    )?;
    check_metric_names("routers", routers.iter().map(|r| r.name.as_str()))?;

    Ok(Config {
        models,
        recipes,
        routers,
        signal_headers,
        virtual_models,
        limits,
        stream_final_call,
        trace_allowed,
        reply_model_name,
        listed_passthrough_models,
        virtual_index,
        namespaces,
    })
}

/// Two names that become the same metric name would share counters.
fn check_metric_names<'a>(section: &str, names: impl Iterator<Item = &'a str>) -> ConfigResult<()> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for name in names {
        if let Some(other) = seen.insert(crate::metrics::sanitize(name), name) {
            return Err(ConfigError::new(
                format!("{section}.{name}"),
                format!("has the same metric name as `{other}` (names differ only in punctuation)"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn is_valid_name(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '@'))
}

pub(crate) fn named<'a>(field: &Node<'a>, what: &str) -> ConfigResult<Object<'a>> {
    let obj = field.object()?;
    if obj.is_empty() {
        return Err(obj.error(format!("must name at least one {what}")));
    }
    Ok(obj)
}

fn parse_models(
    field: &Node<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> ConfigResult<Vec<UpstreamModel>> {
    let obj = named(field, "model")?;
    if obj.len() > bounds::MAX_MODELS {
        return Err(obj.error(format!("at most {} models", bounds::MAX_MODELS)));
    }
    let mut models = Vec::with_capacity(obj.len());
    for (alias, field) in obj.entries() {
        models.push(parse_model(alias, &field, env)?);
    }
    Ok(models)
}

fn parse_model(
    alias: &str,
    field: &Node<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> ConfigResult<UpstreamModel> {
    let node = field;
    if alias.is_empty() || alias.len() > bounds::MAX_NAME_LEN || !is_valid_name(alias) {
        return Err(node.error("model alias must be 1-256 characters of [A-Za-z0-9-_.:/@]"));
    }
    let obj = node.object()?;
    obj.deny_unknown(&[
        "cluster",
        "authority",
        "path",
        "model",
        "auth",
        "headers",
        "price",
        "logprobs",
        "timeout_ms",
    ])?;
    let cluster = obj
        .required("cluster")?
        .non_empty_string(bounds::MAX_NAME_LEN)?
        .to_string();
    let authority = match obj.field("authority") {
        Some(f) => {
            let authority = header_value(&f)?;
            if !is_valid_authority(authority) {
                return Err(f.error("must be a host name with an optional :port"));
            }
            authority.to_string()
        }
        None => default_authority(&cluster).ok_or_else(|| {
            obj.error(format!(
                "needs `authority`: it cannot be derived from cluster `{cluster}`"
            ))
        })?,
    };
    let path = match obj.field("path") {
        Some(f) => {
            let p = header_value(&f)?;
            if !p.starts_with('/') {
                return Err(f.error("must start with '/'"));
            }
            p.to_string()
        }
        None => defaults::CHAT_PATH.to_string(),
    };
    let upstream_model = match obj.field("model") {
        Some(f) => f.non_empty_string(bounds::MAX_NAME_LEN)?.to_string(),
        None => alias.to_string(),
    };
    let credential = obj
        .field("auth")
        .map(|f| parse_credential(&f, env))
        .transpose()?;
    let extra_headers = match obj.field("headers") {
        Some(f) => parse_headers(&f)?,
        None => Vec::new(),
    };
    if let Some(credential) = &credential {
        if extra_headers
            .iter()
            .any(|(name, _)| *name == credential.header)
        {
            return Err(ConfigError::new(
                format!("{}.headers.{}", obj.path(), credential.header),
                "is already set by `auth`",
            ));
        }
    }
    let price = match obj.field("price") {
        Some(f) => {
            let p = f.object()?;
            p.deny_unknown(&["input_per_million", "output_per_million"])?;
            Price {
                input_per_million: p.opt_number("input_per_million", 0.0, 1e6)?.unwrap_or(0.0),
                output_per_million: p.opt_number("output_per_million", 0.0, 1e6)?.unwrap_or(0.0),
            }
        }
        None => Price::default(),
    };
    Ok(UpstreamModel {
        alias: alias.to_string(),
        cluster,
        authority,
        path,
        upstream_model,
        credential,
        extra_headers,
        price,
        logprobs: obj.opt_bool("logprobs")?.unwrap_or(false),
        timeout_ms: obj
            .opt_integer("timeout_ms", 1, bounds::MAX_TIMEOUT_MS)?
            .unwrap_or(defaults::TIMEOUT_MS),
    })
}

fn is_valid_authority(authority: &str) -> bool {
    !authority.is_empty()
        && authority.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_' | b'[' | b']')
        })
}

/// The `:authority` for a cluster when none is configured: the cluster name itself, or for
/// Istio's `outbound|<port>|<subset>|<fqdn>` names the host (with the port unless it is the
/// scheme's default), since the cluster name is not a valid Host.
fn default_authority(cluster: &str) -> Option<String> {
    let authority = match cluster.split('|').collect::<Vec<_>>().as_slice() {
        [_, port, _, host] if !host.is_empty() => {
            if matches!(*port, "" | "80" | "443") {
                (*host).to_string()
            } else {
                format!("{host}:{port}")
            }
        }
        [_] => cluster.to_string(),
        _ => return None,
    };
    is_valid_authority(&authority).then_some(authority)
}

fn header_value<'a>(field: &Node<'a>) -> ConfigResult<&'a str> {
    let s = field.non_empty_string(4096)?;
    if s.chars().any(|c| c.is_control()) {
        return Err(field.error("must not contain control characters"));
    }
    Ok(s)
}

fn check_header_name(field: &Node<'_>, name: &str) -> ConfigResult<()> {
    let token = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        });
    if !token {
        return Err(field.error("header names must be lowercase HTTP tokens"));
    }
    if matches!(
        name,
        "host" | "content-length" | "transfer-encoding" | "connection" | "content-type"
    ) {
        return Err(field.error(format!(
            "header `{name}` is set by the gateway and cannot be configured"
        )));
    }
    Ok(())
}

fn parse_headers(field: &Node<'_>) -> ConfigResult<Vec<(String, String)>> {
    let obj = field.object()?;
    if obj.len() > bounds::MAX_HEADERS_PER_MODEL {
        return Err(obj.error(format!("at most {} headers", bounds::MAX_HEADERS_PER_MODEL)));
    }
    let mut headers = Vec::with_capacity(obj.len());
    for (name, value) in obj.entries() {
        check_header_name(&value, name)?;
        headers.push((name.to_string(), header_value(&value)?.to_string()));
    }
    Ok(headers)
}

fn parse_credential(
    field: &Node<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> ConfigResult<Credential> {
    let obj = field.object()?;
    obj.deny_unknown(&["header", "env", "value", "prefix"])?;
    let header = match obj.field("header") {
        Some(f) => {
            let name = f.non_empty_string(256)?;
            check_header_name(&f, name)?;
            name.to_string()
        }
        None => "authorization".to_string(),
    };
    let prefix = match obj.opt_string("prefix")? {
        Some(p) => p.to_string(),
        None if header == "authorization" => "Bearer ".to_string(),
        None => String::new(),
    };
    let secret = match (obj.field("env"), obj.field("value")) {
        (Some(var), None) => {
            let name = var.non_empty_string(256)?;
            match env(name) {
                Some(v) if !v.is_empty() => v,
                _ => {
                    return Err(var.error(format!(
                        "environment variable `{name}` is not set in the VM \
                         (expose it with vm_config.environment_variables)"
                    )))
                }
            }
        }
        (None, Some(value)) => value.non_empty_string(8192)?.to_string(),
        (Some(_), Some(_)) => return Err(obj.error("set either `env` or `value`, not both")),
        (None, None) => return Err(obj.error("needs `env` (preferred) or `value`")),
    };
    let value = format!("{prefix}{secret}");
    if value.chars().any(|c| c.is_control()) {
        return Err(obj.error("credential must not contain control characters"));
    }
    Ok(Credential {
        header,
        value: Secret(value),
    })
}

fn parse_virtual_models(
    field: &Node<'_>,
    recipes: &HashMap<&str, RecipeId>,
    routers: &HashMap<&str, RouterId>,
) -> ConfigResult<Vec<VirtualModel>> {
    let obj = named(field, "virtual model")?;
    if obj.len() > bounds::MAX_VIRTUAL_MODELS {
        return Err(obj.error(format!(
            "at most {} virtual models",
            bounds::MAX_VIRTUAL_MODELS
        )));
    }
    let mut out = Vec::with_capacity(obj.len());
    for (name, field) in obj.entries() {
        if name.is_empty() || name.len() > bounds::MAX_NAME_LEN || !is_valid_name(name) {
            return Err(
                field.error("virtual model name must be 1-256 characters of [A-Za-z0-9-_.:/@]")
            );
        }
        let entry = field.object()?;
        entry.deny_unknown(&["recipe", "router", "description"])?;
        let target = match (entry.field("recipe"), entry.field("router")) {
            (Some(recipe_field), None) => {
                let recipe_name = recipe_field.string()?;
                Target::Recipe(*recipes.get(recipe_name).ok_or_else(|| {
                    recipe_field.error(format!("unknown recipe `{recipe_name}` (not in `recipes`)"))
                })?)
            }
            (None, Some(router_field)) => {
                let router_name = router_field.string()?;
                Target::Router(*routers.get(router_name).ok_or_else(|| {
                    router_field.error(format!("unknown router `{router_name}` (not in `routers`)"))
                })?)
            }
            _ => return Err(entry.error("needs either `recipe` or `router`")),
        };
        out.push(VirtualModel {
            name: name.to_string(),
            target,
            description: entry.opt_string("description")?.map(str::to_string),
        });
    }
    Ok(out)
}

fn parse_limits(
    field: Option<Node<'_>>,
    recipe_index: &HashMap<&str, RecipeId>,
    recipes: &[Rc<Recipe>],
) -> ConfigResult<Limits> {
    let mut limits = Limits {
        max_body_bytes: defaults::MAX_BODY_BYTES as usize,
        request_deadline_ms: defaults::REQUEST_DEADLINE_MS,
        max_upstream_body_bytes: defaults::MAX_UPSTREAM_BODY_BYTES as usize,
        max_concurrent_requests: defaults::MAX_CONCURRENT_REQUESTS as usize,
        overload: Overload::Reject,
        retry_after_s: defaults::RETRY_AFTER_S,
    };
    let Some(field) = field else {
        return Ok(limits);
    };
    let obj = field.object()?;
    obj.deny_unknown(&[
        "max_body_bytes",
        "request_deadline_ms",
        "max_upstream_body_bytes",
        "max_concurrent_requests",
        "overload",
        "retry_after_s",
    ])?;
    if let Some(n) = obj.opt_integer(
        "max_concurrent_requests",
        1,
        bounds::MAX_CONCURRENT_REQUESTS,
    )? {
        limits.max_concurrent_requests = n as usize;
    }
    if let Some(n) = obj.opt_integer("retry_after_s", 1, bounds::MAX_RETRY_AFTER_S)? {
        limits.retry_after_s = n;
    }
    if let Some(overload) = obj.field("overload") {
        let overload = overload.object()?;
        overload.deny_unknown(&["policy", "recipe"])?;
        let policy = overload.required("policy")?;
        limits.overload = match policy.string()? {
            "reject" => {
                if let Some(recipe) = overload.field("recipe") {
                    return Err(recipe.error("only the `degrade` policy takes a recipe"));
                }
                Overload::Reject
            }
            "degrade" => {
                let field = overload.required("recipe")?;
                let name = field.string()?;
                let Some(&id) = recipe_index.get(name) else {
                    return Err(field.error(format!("unknown recipe `{name}`")));
                };
                let single = recipes
                    .get(id.0)
                    .is_some_and(|r| matches!(r.algorithm, Algorithm::Single { .. }));
                if !single {
                    return Err(field.error(format!(
                        "`{name}` must be a `single` recipe: degrading must not fan out"
                    )));
                }
                Overload::Degrade(id)
            }
            _ => return Err(policy.error("must be \"reject\" or \"degrade\"")),
        };
    }
    if let Some(n) = obj.opt_integer("max_body_bytes", 1, bounds::MAX_BODY_BYTES)? {
        limits.max_body_bytes = n as usize;
    }
    if let Some(n) = obj.opt_integer("request_deadline_ms", 1, bounds::MAX_DEADLINE_MS)? {
        limits.request_deadline_ms = n;
    }
    if let Some(n) = obj.opt_integer("max_upstream_body_bytes", 1, bounds::MAX_BODY_BYTES)? {
        limits.max_upstream_body_bytes = n as usize;
    }
    Ok(limits)
}

#[cfg(test)]
mod tests;
