//! The `routers` section: signals, projections and decisions, validated and compiled once
//! (keyword automata, regular expressions) so that routing a request only evaluates.

use super::reader::{ConfigError, ConfigResult, Node, Object};
use super::{is_valid_name, named, RecipeId};
use crate::router::{
    phrase_patterns, Band, Condition, Decision, Detector, KeywordGroup, LengthUnit, Measure, Owner,
    Parameter, Projection, Router, Scope, Searcher, Signal, SignalKind, Term, MAX_VALUE,
};
use regex::RegexBuilder;
use std::collections::HashMap;

/// Hard maxima of the routing configuration.
pub mod bounds {
    pub const MAX_ROUTERS: usize = 8;
    pub const MAX_SIGNALS: usize = 128;
    pub const MAX_KEYWORDS_PER_SIGNAL: usize = 1000;
    pub const MAX_KEYWORD_LEN: usize = 256;
    /// All keywords of one router together, in bytes: bounds the automata's memory. A
    /// keyword group gets a DFA (fastest, largest) when its table would fit
    /// [`MAX_DFA_BYTES`](crate::router::MAX_DFA_BYTES), the compact NFA otherwise.
    pub const MAX_KEYWORD_BYTES: usize = 256 * 1024;
    pub const MAX_PATTERN_LEN: usize = 1024;
    /// Compiled size of one regular expression (the `regex` crate's own limit is 10 MiB).
    pub const MAX_REGEX_BYTES: usize = 1 << 20;
    pub const MAX_PROJECTIONS: usize = 16;
    /// Bands are a bit set in a `u64`.
    pub const MAX_BANDS: usize = 16;
    pub const MAX_DECISIONS: usize = 64;
    pub const MAX_PRIORITY: u64 = 1000;
    pub const MAX_CONDITION_DEPTH: usize = 8;
    pub const MAX_CONDITION_NODES: usize = 64;
    pub const MAX_SIGNAL_HEADERS: usize = 16;
    /// Longer header values count as absent.
    pub const MAX_HEADER_VALUE: usize = 256;
    pub const MAX_VALUES: usize = 64;
}

/// Headers that carry credentials or session state; never a routing signal.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
];

/// Parses `routers`. `headers` collects the allow-listed header names of every router (the
/// only request headers the gateway reads for routing).
pub fn parse_routers(
    field: &Node<'_>,
    recipes: &HashMap<&str, RecipeId>,
    headers: &mut Vec<String>,
) -> ConfigResult<Vec<Router>> {
    let obj = named(field, "router")?;
    if obj.len() > bounds::MAX_ROUTERS {
        return Err(obj.error(format!("at most {} routers", bounds::MAX_ROUTERS)));
    }
    let mut routers = Vec::with_capacity(obj.len());
    for (name, node) in obj.entries() {
        if name.is_empty() || name.len() > 64 || !is_valid_name(name) {
            return Err(node.error("router name must be 1-64 characters of [A-Za-z0-9-_.:/@]"));
        }
        routers.push(parse_router(name, &node, recipes, headers)?);
    }
    Ok(routers)
}

fn parse_router(
    name: &str,
    node: &Node<'_>,
    recipes: &HashMap<&str, RecipeId>,
    headers: &mut Vec<String>,
) -> ConfigResult<Router> {
    let obj = node.object()?;
    obj.deny_unknown(&["signals", "projections", "decisions", "description"])?;
    obj.opt_string("description")?;
    let (signals, keyword_groups) = match obj.field("signals") {
        Some(field) => parse_signals(&field, headers)?,
        None => (Vec::new(), Vec::new()),
    };
    let signal_index: HashMap<&str, usize> = signals
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let projections = match obj.field("projections") {
        Some(field) => parse_projections(&field, &signal_index)?,
        None => Vec::new(),
    };
    let names = Names {
        signals: &signal_index,
        projections: &projections,
    };
    let decisions = parse_decisions(&obj.required("decisions")?, &names, recipes)?;
    Ok(Router {
        name: name.to_string(),
        signals,
        keyword_groups,
        projections,
        decisions,
    })
}

fn check_name(node: &Node<'_>, name: &str, what: &str) -> ConfigResult<()> {
    if name.is_empty() || name.len() > 64 || !is_valid_name(name) {
        return Err(node.error(format!(
            "{what} name must be 1-64 characters of [A-Za-z0-9-_.:/@]"
        )));
    }
    Ok(())
}

/// A keyword list waiting for its group's automaton.
struct PendingKeywords {
    signal: usize,
    scope: Scope,
    case_sensitive: bool,
    whole_word: bool,
    keywords: Vec<String>,
}

fn parse_signals(
    field: &Node<'_>,
    headers: &mut Vec<String>,
) -> ConfigResult<(Vec<Signal>, Vec<KeywordGroup>)> {
    let obj = field.object()?;
    if obj.len() > bounds::MAX_SIGNALS {
        return Err(obj.error(format!("at most {} signals", bounds::MAX_SIGNALS)));
    }
    let mut signals = Vec::with_capacity(obj.len());
    let mut pending = Vec::new();
    for (name, node) in obj.entries() {
        check_name(&node, name, "signal")?;
        let index = signals.len();
        let (kind, min, max) = parse_signal(&node, index, &mut pending, headers)?;
        signals.push(Signal {
            name: name.to_string(),
            kind,
            min,
            max,
        });
    }
    let keyword_bytes: usize = pending
        .iter()
        .flat_map(|p| &p.keywords)
        .map(String::len)
        .sum();
    if keyword_bytes > bounds::MAX_KEYWORD_BYTES {
        return Err(field.error(format!(
            "keyword lists hold {keyword_bytes} bytes; at most {} per router",
            bounds::MAX_KEYWORD_BYTES
        )));
    }
    let structure: Vec<Scope> = signals
        .iter()
        .filter_map(|s| match s.kind {
            SignalKind::Structure { scope, .. } => Some(scope),
            _ => None,
        })
        .collect();
    let groups = build_keyword_groups(field, pending, &structure)?;
    Ok((signals, groups))
}

const SIGNAL_TYPES: &[&str] = &[
    "keywords",
    "regex",
    "length",
    "structure",
    "conversation",
    "parameter",
    "header",
];

fn parse_signal(
    node: &Node<'_>,
    index: usize,
    pending: &mut Vec<PendingKeywords>,
    headers: &mut Vec<String>,
) -> ConfigResult<(SignalKind, f64, f64)> {
    let obj = node.object()?;
    let type_field = obj.required("type")?;
    let kind_name = type_field.string()?;
    let common = ["type", "description", "min", "max"];
    let allowed = |extra: &[&'static str]| -> Vec<&'static str> {
        common.iter().chain(extra.iter()).copied().collect()
    };
    obj.opt_string("description")?;
    let kind = match kind_name {
        "keywords" => {
            obj.deny_unknown(&allowed(&[
                "keywords",
                "scope",
                "whole_word",
                "case_sensitive",
            ]))?;
            let list = obj.required("keywords")?;
            let items = list.elements()?;
            if items.is_empty() || items.len() > bounds::MAX_KEYWORDS_PER_SIGNAL {
                return Err(list.error(format!(
                    "must list 1-{} keywords",
                    bounds::MAX_KEYWORDS_PER_SIGNAL
                )));
            }
            let case_sensitive = obj.opt_bool("case_sensitive")?.unwrap_or(false);
            let mut keywords = Vec::with_capacity(items.len());
            for item in items {
                let k = item.non_empty_string(bounds::MAX_KEYWORD_LEN)?;
                if k.trim().is_empty() {
                    return Err(item.error("a keyword must not be blank"));
                }
                keywords.push(if case_sensitive {
                    k.to_string()
                } else {
                    k.to_lowercase()
                });
            }
            pending.push(PendingKeywords {
                signal: index,
                scope: scope(&obj)?,
                case_sensitive,
                whole_word: obj.opt_bool("whole_word")?.unwrap_or(false),
                keywords,
            });
            SignalKind::Keywords
        }
        "regex" => {
            obj.deny_unknown(&allowed(&["pattern", "scope", "case_insensitive"]))?;
            let field = obj.required("pattern")?;
            let pattern = field.non_empty_string(bounds::MAX_PATTERN_LEN)?;
            let regex = RegexBuilder::new(pattern)
                .case_insensitive(obj.opt_bool("case_insensitive")?.unwrap_or(false))
                .size_limit(bounds::MAX_REGEX_BYTES)
                .dfa_size_limit(bounds::MAX_REGEX_BYTES)
                .build()
                .map_err(|e| field.error(format!("not a valid regular expression: {e}")))?;
            SignalKind::Regex {
                regex,
                scope: scope(&obj)?,
            }
        }
        "length" => {
            obj.deny_unknown(&allowed(&["unit", "scope"]))?;
            let unit = match obj.opt_string("unit")?.unwrap_or("chars") {
                "chars" => LengthUnit::Chars,
                "tokens" => LengthUnit::Tokens,
                _ => {
                    return Err(ConfigError::new(
                        format!("{}.unit", obj.path()),
                        "must be \"chars\" or \"tokens\"",
                    ))
                }
            };
            SignalKind::Length {
                unit,
                scope: scope(&obj)?,
            }
        }
        "structure" => {
            obj.deny_unknown(&allowed(&["detect", "scope"]))?;
            let field = obj.required("detect")?;
            let detector = Detector::parse(field.string()?).ok_or_else(|| {
                field.error(format!("must be one of: {}", Detector::NAMES.join(", ")))
            })?;
            SignalKind::Structure {
                detector,
                scope: scope(&obj)?,
            }
        }
        "conversation" => {
            obj.deny_unknown(&allowed(&["measure"]))?;
            let field = obj.required("measure")?;
            let measure = Measure::parse(field.string()?).ok_or_else(|| {
                field.error(format!("must be one of: {}", Measure::NAMES.join(", ")))
            })?;
            SignalKind::Conversation(measure)
        }
        "parameter" => {
            obj.deny_unknown(&allowed(&["name", "values"]))?;
            let field = obj.required("name")?;
            let parameter = Parameter::parse(field.string()?).ok_or_else(|| {
                field.error(format!("must be one of: {}", Parameter::NAMES.join(", ")))
            })?;
            let values = values(&obj)?;
            if values.is_some() && (obj.field("min").is_some() || obj.field("max").is_some()) {
                return Err(obj.error("set either `values` or `min`/`max`, not both"));
            }
            // A number parameter fires when present (within any bounds); `stream` when true.
            let default_min = if parameter == Parameter::Stream {
                1.0
            } else {
                f64::MIN
            };
            let (min, max) = bounds_of(&obj, default_min)?;
            return Ok((SignalKind::Parameter { parameter, values }, min, max));
        }
        "header" => {
            obj.deny_unknown(&["type", "description", "name", "values"])?;
            let field = obj.required("name")?;
            let name = field.non_empty_string(128)?;
            let token = name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            });
            if !token {
                return Err(field.error("must be a lowercase HTTP header name"));
            }
            if SECRET_HEADERS.contains(&name) {
                return Err(field.error(format!(
                    "`{name}` carries credentials and cannot be a routing signal"
                )));
            }
            let header = match headers.iter().position(|h| h == name) {
                Some(i) => i,
                None => {
                    if headers.len() >= bounds::MAX_SIGNAL_HEADERS {
                        return Err(field.error(format!(
                            "at most {} distinct headers across all routers",
                            bounds::MAX_SIGNAL_HEADERS
                        )));
                    }
                    headers.push(name.to_string());
                    headers.len() - 1
                }
            };
            return Ok((
                SignalKind::Header {
                    header,
                    values: values(&obj)?,
                },
                1.0,
                1.0,
            ));
        }
        other => {
            return Err(type_field.error(format!(
                "unknown signal type `{other}` (expected one of: {})",
                SIGNAL_TYPES.join(", ")
            )))
        }
    };
    let (min, max) = bounds_of(&obj, 1.0)?;
    Ok((kind, min, max))
}

fn bounds_of(obj: &Object<'_>, default_min: f64) -> ConfigResult<(f64, f64)> {
    let min = obj.opt_number("min", -1e15, 1e15)?.unwrap_or(default_min);
    let max = obj.opt_number("max", -1e15, 1e15)?.unwrap_or(f64::MAX);
    if min > max {
        return Err(obj.error("`min` is above `max`: the signal could never fire"));
    }
    Ok((min, max))
}

fn scope(obj: &Object<'_>) -> ConfigResult<Scope> {
    match obj.field("scope") {
        None => Ok(Scope::User),
        Some(field) => Scope::parse(field.string()?)
            .ok_or_else(|| field.error("must be one of: user, last_user, system, all")),
    }
}

fn values(obj: &Object<'_>) -> ConfigResult<Option<Vec<String>>> {
    let Some(field) = obj.field("values") else {
        return Ok(None);
    };
    let items = field.elements()?;
    if items.is_empty() || items.len() > bounds::MAX_VALUES {
        return Err(field.error(format!("must list 1-{} values", bounds::MAX_VALUES)));
    }
    items
        .iter()
        .map(|item| {
            item.non_empty_string(bounds::MAX_HEADER_VALUE)
                .map(str::to_string)
        })
        .collect::<ConfigResult<Vec<_>>>()
        .map(Some)
}

/// Keyword lists of one case mode go into one automaton per text they read, where `user`
/// and `last_user` count as one: with one user turn they are the same text, searched once.
/// A case-insensitive group whose text a structure signal reads (`structure`: their scopes)
/// also holds the structure phrases, so that its pass finds them in the same lowercase text.
fn build_keyword_groups(
    field: &Node<'_>,
    pending: Vec<PendingKeywords>,
    structure: &[Scope],
) -> ConfigResult<Vec<KeywordGroup>> {
    /// Keywords of one case mode and text, each with its owner.
    struct Gathered {
        scopes: Vec<Scope>,
        case_sensitive: bool,
        patterns: Vec<String>,
        owners: Vec<Owner>,
        phrases: bool,
    }
    let text_of = |scope| match scope {
        Scope::LastUser => Scope::User,
        other => other,
    };
    let mut groups: Vec<Gathered> = Vec::new();
    for list in pending {
        let at = match groups.iter().position(|g| {
            g.case_sensitive == list.case_sensitive
                && g.scopes.iter().any(|s| text_of(*s) == text_of(list.scope))
        }) {
            Some(i) => i,
            None => {
                groups.push(Gathered {
                    scopes: Vec::new(),
                    case_sensitive: list.case_sensitive,
                    patterns: Vec::new(),
                    owners: Vec::new(),
                    phrases: false,
                });
                groups.len() - 1
            }
        };
        if let Some(group) = groups.get_mut(at) {
            if !group.scopes.contains(&list.scope) {
                group.scopes.push(list.scope);
            }
            for keyword in list.keywords {
                group.patterns.push(keyword);
                group.owners.push(Owner::Keyword {
                    signal: list.signal,
                    whole_word: list.whole_word,
                    scope: list.scope,
                });
            }
        }
    }
    for group in groups.iter_mut().filter(|g| !g.case_sensitive) {
        group.phrases = structure
            .iter()
            .any(|read| group.scopes.iter().any(|s| text_of(*s) == text_of(*read)));
        if group.phrases {
            for (index, phrase) in phrase_patterns().enumerate() {
                group.patterns.push(phrase.to_string());
                group.owners.push(Owner::Phrase(index));
            }
        }
    }
    groups
        .into_iter()
        .map(
            |Gathered {
                 scopes,
                 case_sensitive,
                 patterns,
                 owners,
                 phrases,
             }| {
                let automaton = Searcher::build(&patterns)
                    .map_err(|e| field.error(format!("keyword lists do not compile: {e}")))?;
                Ok(KeywordGroup {
                    scopes,
                    case_sensitive,
                    automaton,
                    owners,
                    phrases,
                })
            },
        )
        .collect()
}

fn parse_projections(
    field: &Node<'_>,
    signals: &HashMap<&str, usize>,
) -> ConfigResult<Vec<Projection>> {
    let obj = field.object()?;
    if obj.len() > bounds::MAX_PROJECTIONS {
        return Err(obj.error(format!("at most {} projections", bounds::MAX_PROJECTIONS)));
    }
    let mut projections = Vec::with_capacity(obj.len());
    for (name, node) in obj.entries() {
        check_name(&node, name, "projection")?;
        let p = node.object()?;
        p.deny_unknown(&["weights", "bands", "description"])?;
        p.opt_string("description")?;
        let weights = named(&p.required("weights")?, "weighted signal")?;
        let mut terms = Vec::with_capacity(weights.len());
        for (signal_name, w) in weights.entries() {
            let signal = *signals.get(signal_name).ok_or_else(|| {
                w.error(format!("unknown signal `{signal_name}` (not in `signals`)"))
            })?;
            let term = match w.object() {
                Err(_) => Term {
                    signal,
                    weight: w.number(-1e6, 1e6)?,
                    value_cap: None,
                },
                Ok(t) => {
                    t.deny_unknown(&["weight", "of", "cap"])?;
                    let weight = t.required("weight")?.number(-1e6, 1e6)?;
                    let of_value = match t.opt_string("of")?.unwrap_or("fired") {
                        "fired" => false,
                        "value" => true,
                        _ => {
                            return Err(ConfigError::new(
                                format!("{}.of", t.path()),
                                "must be \"fired\" or \"value\"",
                            ))
                        }
                    };
                    let cap = t.opt_number("cap", 0.0, MAX_VALUE)?;
                    if cap.is_some() && !of_value {
                        return Err(t.error("`cap` applies only with \"of\": \"value\""));
                    }
                    Term {
                        signal,
                        weight,
                        value_cap: of_value.then_some(cap.unwrap_or(MAX_VALUE)),
                    }
                }
            };
            terms.push(term);
        }
        let bands_field = p.required("bands")?;
        let items = bands_field.elements()?;
        if items.len() < 2 || items.len() > bounds::MAX_BANDS {
            return Err(bands_field.error(format!("must list 2-{} bands", bounds::MAX_BANDS)));
        }
        let mut bands: Vec<Band> = Vec::with_capacity(items.len());
        let last = items.len() - 1;
        for (i, item) in items.iter().enumerate() {
            let b = item.object()?;
            b.deny_unknown(&["name", "below"])?;
            let band_name = b.required("name")?;
            let band = band_name.string()?;
            check_name(&band_name, band, "band")?;
            if bands.iter().any(|x| x.name == band) {
                return Err(band_name.error(format!("band `{band}` is listed twice")));
            }
            let below = b.opt_number("below", -1e15, 1e15)?;
            match (i == last, below) {
                (true, Some(_)) => {
                    return Err(b.error("the last band takes every higher score: no `below`"))
                }
                (false, None) => return Err(b.error("needs `below` (only the last band has none)")),
                _ => {}
            }
            if let (Some(below), Some(prev)) = (below, bands.last().and_then(|x| x.below)) {
                if below <= prev {
                    return Err(b.error("`below` must increase from band to band"));
                }
            }
            bands.push(Band {
                name: band.to_string(),
                below,
            });
        }
        projections.push(Projection {
            name: name.to_string(),
            terms,
            bands,
        });
    }
    Ok(projections)
}

struct Names<'a> {
    signals: &'a HashMap<&'a str, usize>,
    projections: &'a [Projection],
}

fn parse_decisions(
    field: &Node<'_>,
    names: &Names<'_>,
    recipes: &HashMap<&str, RecipeId>,
) -> ConfigResult<Vec<Decision>> {
    let items = field.elements()?;
    if items.is_empty() || items.len() > bounds::MAX_DECISIONS {
        return Err(field.error(format!("must list 1-{} decisions", bounds::MAX_DECISIONS)));
    }
    let mut decisions: Vec<Decision> = Vec::with_capacity(items.len());
    let mut catch_all: Option<String> = None;
    for item in &items {
        let d = item.object()?;
        d.deny_unknown(&["name", "priority", "when", "recipe", "description"])?;
        let name_field = d.required("name")?;
        let name = name_field.string()?;
        check_name(&name_field, name, "decision")?;
        let metric = crate::metrics::sanitize(name);
        if decisions
            .iter()
            .any(|x| crate::metrics::sanitize(&x.name) == metric)
        {
            return Err(name_field.error(format!(
                "decision `{name}` is listed twice (or differs from another only in punctuation)"
            )));
        }
        let recipe_field = d.required("recipe")?;
        let recipe_name = recipe_field.string()?;
        let recipe = *recipes.get(recipe_name).ok_or_else(|| {
            recipe_field.error(format!("unknown recipe `{recipe_name}` (not in `recipes`)"))
        })?;
        let when = match d.field("when") {
            Some(node) => {
                let mut count = 0;
                Some(parse_condition(&node, names, 1, &mut count)?)
            }
            None => {
                if let Some(other) = &catch_all {
                    return Err(d.error(format!(
                        "a second catch-all (no `when`); `{other}` already catches everything"
                    )));
                }
                catch_all = Some(name.to_string());
                None
            }
        };
        decisions.push(Decision {
            name: name.to_string(),
            priority: d
                .opt_integer("priority", 0, bounds::MAX_PRIORITY)?
                .unwrap_or(0) as u32,
            when,
            recipe,
            description: d.opt_string("description")?.map(str::to_string),
        });
    }
    let Some(catch_all) = catch_all else {
        return Err(field.error(
            "needs exactly one catch-all decision (one without `when`), so every request is routed",
        ));
    };
    // Stable: equal priorities keep their configured order.
    crate::stable_sort::sort_by(&mut decisions, |a, b| b.priority.cmp(&a.priority));
    if let Some(position) = decisions.iter().position(|d| d.when.is_none()) {
        if let Some(unreachable) = decisions.get(position + 1) {
            return Err(field.error(format!(
                "decision `{}` can never match: the catch-all `{catch_all}` is checked before it \
                 (give the catch-all the lowest priority)",
                unreachable.name
            )));
        }
    }
    Ok(decisions)
}

fn parse_condition(
    node: &Node<'_>,
    names: &Names<'_>,
    depth: usize,
    count: &mut usize,
) -> ConfigResult<Condition> {
    *count += 1;
    if depth > bounds::MAX_CONDITION_DEPTH {
        return Err(node.error(format!(
            "conditions nest at most {} levels",
            bounds::MAX_CONDITION_DEPTH
        )));
    }
    if *count > bounds::MAX_CONDITION_NODES {
        return Err(node.error(format!(
            "a decision's condition has at most {} nodes",
            bounds::MAX_CONDITION_NODES
        )));
    }
    let obj = node.object()?;
    let keys = ["signal", "band", "all", "any", "not"];
    let present: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| obj.field(k).is_some())
        .collect();
    let [key] = present.as_slice() else {
        return Err(obj.error(
            "a condition is exactly one of {\"signal\"}, {\"band\", \"in\"}, {\"all\"}, {\"any\"}, {\"not\"}",
        ));
    };
    match *key {
        "signal" => {
            obj.deny_unknown(&["signal"])?;
            let field = obj.required("signal")?;
            let name = field.string()?;
            let index = *names.signals.get(name).ok_or_else(|| {
                field.error(format!("unknown signal `{name}` (not in `signals`)"))
            })?;
            Ok(Condition::Signal(index))
        }
        "band" => {
            obj.deny_unknown(&["band", "in", "is"])?;
            let field = obj.required("band")?;
            let name = field.string()?;
            let (projection, p) = names
                .projections
                .iter()
                .enumerate()
                .find(|(_, p)| p.name == name)
                .ok_or_else(|| {
                    field.error(format!(
                        "unknown projection `{name}` (not in `projections`)"
                    ))
                })?;
            let wanted: Vec<Node<'_>> = match (obj.field("in"), obj.field("is")) {
                (Some(list), None) => list.elements()?,
                (None, Some(one)) => vec![one],
                _ => return Err(obj.error("name the bands with either `in` (a list) or `is`")),
            };
            if wanted.is_empty() {
                return Err(obj.error("`in` must list at least one band"));
            }
            let mut bands = 0u64;
            for w in wanted {
                let band = w.string()?;
                let i =
                    p.bands.iter().position(|b| b.name == band).ok_or_else(|| {
                        w.error(format!("projection `{name}` has no band `{band}`"))
                    })?;
                bands |= 1u64 << i;
            }
            Ok(Condition::Band { projection, bands })
        }
        "not" => {
            obj.deny_unknown(&["not"])?;
            let inner = parse_condition(&obj.required("not")?, names, depth + 1, count)?;
            Ok(Condition::Not(Box::new(inner)))
        }
        list_key => {
            obj.deny_unknown(&[list_key])?;
            let list = obj.required(list_key)?;
            let items = list.elements()?;
            if items.is_empty() {
                return Err(list.error("must list at least one condition"));
            }
            let mut out = Vec::with_capacity(items.len());
            for item in &items {
                out.push(parse_condition(item, names, depth + 1, count)?);
            }
            Ok(if list_key == "all" {
                Condition::All(out)
            } else {
                Condition::Any(out)
            })
        }
    }
}
