//! Route rules (docs/reference.md §4.2): load a routes file, compile its templates, match a method and path.
//!
//! Promise: a path matches a rule only when every segment matches: a literal segment equals the
//! raw path bytes exactly, `{name}` takes one non-empty segment, `{name}suffix` takes one segment
//! that ends in `suffix` with a non-empty remainder. No globs, regexes or prefixes, and no
//! decoding: `/api/%61gents/me` is not `/api/agents/me`. Where several rules allowing the method
//! match, the most specific wins, compared left to right: literal, then parameter with suffix
//! (longer suffix first), then bare parameter. A file that would make two rules with a shared
//! method ambiguous is refused when it loads, as is any unknown key, duplicate id, bad method,
//! bad template or bad content type, with a one-line error naming the rule.
//!
//! Attacks defended: reaching an endpoint outside the allowlist through a template that matches
//! more than it appears to (prefix or regex rules, parameters spanning `/`, empty parameters that
//! turn `/a/{id}/b` into `/a//b`), and silent shadowing between rules in an operator's file.
//!
//! Format: `[[route]]` tables with `id`, `method` or `methods`, `path` or `paths`, and optional
//! `content_types` and `max_body_bytes`. `paths` (an extension of docs/reference.md §4.2, mirroring
//! `methods`) lets one rule cover several templates, which is how Paperclip's own allowlist
//! groups them; each template becomes one [`Route`] carrying the rule's id.

use std::sync::Arc;

use http::Method;
use serde::Deserialize;

/// Most segments a template may have. Paperclip's deepest template has 6; the bound keeps
/// matching recursion shallow whatever an operator writes.
pub const MAX_TEMPLATE_SEGMENTS: usize = 32;

/// The shipped Paperclip allowlist (docs/reference.md §4.3), compiled into the binary.
const BUILTIN_ROUTES: &str = include_str!("../../config/routes/paperclip.toml");

/// One compiled route: a rule's methods and one of its path templates.
#[derive(Debug, Clone)]
pub struct Route {
    /// The rule's id (shared by every template of a rule with `paths`).
    pub id: Arc<str>,
    /// Methods as written in the rule. `HEAD` is also allowed wherever `GET` is.
    pub methods: Vec<Method>,
    /// The path template as written, e.g. `/api/issues/{issue}/comments`.
    pub path: String,
    /// Accepted request content types (lower case `type/subtype`, or `type/*+suffix`);
    /// `None` means the JSON default of [`super::headers::content_type_allowed`].
    pub content_types: Option<Vec<String>>,
    /// Per-route body limit; it can only lower the global limit. `None` means the global limit.
    pub max_body_bytes: Option<u64>,
}

impl Route {
    /// Whether this route allows `method` (`HEAD` wherever `GET` is allowed).
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.iter().any(|m| m == method) || (*method == Method::HEAD && self.allows_get())
    }

    fn allows_get(&self) -> bool {
        self.methods.contains(&Method::GET)
    }
}

/// Why a routes file was refused. Every message is one line and names the rule id or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutesError {
    #[error("routes file, line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("routes file defines no [[route]]")]
    Empty,
    #[error("route {id:?}: invalid id ({reason})")]
    InvalidId { id: String, reason: &'static str },
    #[error("route id {0:?} is used more than once")]
    DuplicateId(String),
    #[error("route {id:?}: give exactly one of `{one}` and `{many}`")]
    OneOf {
        id: String,
        one: &'static str,
        many: &'static str,
    },
    #[error("route {id:?}: invalid method {method:?} ({reason})")]
    InvalidMethod {
        id: String,
        method: String,
        reason: &'static str,
    },
    #[error("route {id:?}: invalid path template {template:?} ({reason})")]
    InvalidTemplate {
        id: String,
        template: String,
        reason: &'static str,
    },
    #[error("route {id:?}: invalid content type {value:?} ({reason})")]
    InvalidContentType {
        id: String,
        value: String,
        reason: &'static str,
    },
    #[error(
        "route {id:?}: {method} {template} conflicts with route {other:?} ({other_template}): \
         same literals and parameters in the same positions"
    )]
    Conflict {
        id: String,
        template: String,
        other: String,
        other_template: String,
        method: String,
    },
}

/// The compiled route table: the routes, and a segment tree to match them without allocating.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    rules: usize,
    root: Node,
}

impl RouteTable {
    /// The built-in Paperclip allowlist (`config/routes/paperclip.toml`, compiled in).
    ///
    /// # Panics
    /// Only if the shipped file is invalid, which a unit test rules out.
    pub fn builtin() -> RouteTable {
        match RouteTable::from_toml(BUILTIN_ROUTES) {
            Ok(table) => table,
            Err(e) => panic!("the built-in config/routes/paperclip.toml is invalid: {e}"),
        }
    }

    /// Parses and compiles a routes file.
    pub fn from_toml(text: &str) -> Result<RouteTable, RoutesError> {
        let file: RawFile = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        RouteTable::compile(file.route)
    }

    fn compile(rules: Vec<RawRule>) -> Result<RouteTable, RoutesError> {
        if rules.is_empty() {
            return Err(RoutesError::Empty);
        }
        let mut routes = Vec::new();
        let mut ids: Vec<Arc<str>> = Vec::with_capacity(rules.len());
        let mut root = Node::default();
        for rule in &rules {
            let id = check_id(&rule.id)?;
            if ids.iter().any(|seen| **seen == *id) {
                return Err(RoutesError::DuplicateId(rule.id.clone()));
            }
            ids.push(id.clone());
            let methods = compile_methods(rule)?;
            let content_types = rule
                .content_types
                .as_deref()
                .map(|list| compile_content_types(&rule.id, list))
                .transpose()?;
            for template in one_or_many(&rule.id, &rule.path, &rule.paths, "path", "paths")? {
                let segments = compile_template(&rule.id, template)?;
                let index = routes.len();
                routes.push(Route {
                    id: id.clone(),
                    methods: methods.clone(),
                    path: template.clone(),
                    content_types: content_types.clone(),
                    max_body_bytes: rule.max_body_bytes,
                });
                root.insert(&segments, index, &routes)?;
            }
        }
        Ok(RouteTable {
            routes,
            rules: rules.len(),
            root,
        })
    }

    /// Every compiled route (one per template), in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Number of rules (`[[route]]` tables) in the file.
    pub fn rule_count(&self) -> usize {
        self.rules
    }

    /// Number of method + template pairs the table allows (implicit `HEAD` not counted).
    pub fn pair_count(&self) -> usize {
        self.routes.iter().map(|r| r.methods.len()).sum()
    }

    /// The most specific route that allows `method` on `path`, if any. `path` is the raw path of
    /// a target that passed [`super::RequestTarget::parse`] (no query). Does not allocate.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Route> {
        let rest = path.strip_prefix('/')?;
        self.root
            .find(rest, method, &self.routes)
            .map(|i| &self.routes[i])
    }
}

impl Default for RouteTable {
    /// The built-in Paperclip allowlist.
    fn default() -> Self {
        RouteTable::builtin()
    }
}

// ---------------------------------------------------------------------------------------------
// File format

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    route: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    method: Option<String>,
    methods: Option<Vec<String>>,
    path: Option<String>,
    paths: Option<Vec<String>>,
    content_types: Option<Vec<String>>,
    max_body_bytes: Option<u64>,
}

/// Turns toml's multi-line diagnostic into one line with a line number.
fn syntax_error(text: &str, e: &toml::de::Error) -> RoutesError {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
        .unwrap_or(1);
    RoutesError::Syntax {
        line,
        message: e.message().trim().replace('\n', " "),
    }
}

fn one_or_many<'r>(
    id: &str,
    one: &'r Option<String>,
    many: &'r Option<Vec<String>>,
    one_key: &'static str,
    many_key: &'static str,
) -> Result<&'r [String], RoutesError> {
    match (one, many) {
        (Some(one), None) => Ok(std::slice::from_ref(one)),
        (None, Some(many)) if !many.is_empty() => Ok(many),
        _ => Err(RoutesError::OneOf {
            id: id.to_owned(),
            one: one_key,
            many: many_key,
        }),
    }
}

/// Ids appear in logs, metrics labels and `explain` output: keep them plain.
fn check_id(id: &str) -> Result<Arc<str>, RoutesError> {
    let invalid = |reason| RoutesError::InvalidId {
        id: id.to_owned(),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("empty"));
    }
    if id.len() > 128 {
        return Err(invalid("longer than 128 bytes"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(invalid("use only ASCII letters, digits, '.', '-' and '_'"));
    }
    Ok(Arc::from(id))
}

fn compile_methods(rule: &RawRule) -> Result<Vec<Method>, RoutesError> {
    let names = one_or_many(&rule.id, &rule.method, &rule.methods, "method", "methods")?;
    let mut methods: Vec<Method> = Vec::with_capacity(names.len());
    for name in names {
        let invalid = |reason| RoutesError::InvalidMethod {
            id: rule.id.clone(),
            method: name.clone(),
            reason,
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid("methods are upper-case letters, e.g. \"GET\""));
        }
        if matches!(name.as_str(), "TRACE" | "TRACK" | "CONNECT") {
            return Err(invalid("TRACE, TRACK and CONNECT are always refused"));
        }
        let method = Method::from_bytes(name.as_bytes()).map_err(|_| invalid("not a token"))?;
        if methods.contains(&method) {
            return Err(invalid("listed twice"));
        }
        methods.push(method);
    }
    Ok(methods)
}

fn compile_content_types(id: &str, list: &[String]) -> Result<Vec<String>, RoutesError> {
    if list.is_empty() {
        return Err(RoutesError::InvalidContentType {
            id: id.to_owned(),
            value: String::new(),
            reason: "an empty list would refuse every body; omit the key for the JSON default",
        });
    }
    list.iter()
        .map(|value| {
            let invalid = |reason| RoutesError::InvalidContentType {
                id: id.to_owned(),
                value: value.clone(),
                reason,
            };
            let (ty, subtype) = value
                .split_once('/')
                .ok_or_else(|| invalid("expected type/subtype without parameters"))?;
            // Wildcards only in the `type/*+suffix` form: never `*/*` or `type/*`.
            let plain = |t: &str| super::headers::is_token(t.as_bytes()) && !t.contains('*');
            let subtype_ok = match subtype.strip_prefix("*+") {
                Some(suffix) => plain(suffix),
                None => plain(subtype),
            };
            if !plain(ty) || !subtype_ok {
                return Err(invalid(
                    "expected type/subtype or type/*+suffix without parameters",
                ));
            }
            Ok(value.to_ascii_lowercase())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Templates

/// One compiled template segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `{name}` or `{name}suffix`; the name only documents the rule and is not kept.
    Param {
        suffix: Box<str>,
    },
}

fn compile_template(id: &str, template: &str) -> Result<Vec<Segment>, RoutesError> {
    let invalid = |reason| RoutesError::InvalidTemplate {
        id: id.to_owned(),
        template: template.to_owned(),
        reason,
    };
    let rest = template
        .strip_prefix('/')
        .ok_or_else(|| invalid("must start with '/'"))?;
    if rest.is_empty() {
        return Err(invalid("must have at least one segment"));
    }
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        if segments.len() == MAX_TEMPLATE_SEGMENTS {
            return Err(invalid("more than 32 segments"));
        }
        segments.push(compile_segment(raw).map_err(invalid)?);
    }
    Ok(segments)
}

fn compile_segment(raw: &str) -> Result<Segment, &'static str> {
    if raw.is_empty() {
        return Err("empty segment");
    }
    if let Some(after_brace) = raw.strip_prefix('{') {
        let (name, suffix) = after_brace
            .split_once('}')
            .ok_or("'{' without a closing '}'")?;
        let mut name_bytes = name.bytes();
        let name_ok = name_bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name_bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err("parameter names are letters, digits and '_'");
        }
        check_literal(suffix)?;
        return Ok(Segment::Param {
            suffix: suffix.into(),
        });
    }
    if raw.contains(['{', '}']) {
        return Err("a parameter must start its segment, one per segment");
    }
    if raw == "." || raw == ".." {
        return Err("'.' and '..' segments can never match");
    }
    check_literal(raw)?;
    Ok(Segment::Literal(raw.into()))
}

/// Literals hold only characters a checked path carries unencoded (RFC 3986 `pchar` without
/// `%`): a literal is compared with raw bytes, so an escape in it could never be matched
/// canonically.
fn check_literal(text: &str) -> Result<(), &'static str> {
    if text.bytes().all(super::target::is_pchar) {
        Ok(())
    } else {
        Err("literals use only unreserved characters, sub-delims, ':' and '@' (no '%', '{', '}')")
    }
}

// ---------------------------------------------------------------------------------------------
// Matching tree

/// A node of the segment tree. Children are tried most specific first: literals (exact), then
/// parameters with a suffix (longest suffix first), then the bare parameter. `ends` lists the
/// routes whose template ends here. Literals are few per node (at most a dozen in Paperclip's
/// table) and mostly differ in length, so a linear scan that compares lengths first beats a
/// binary search of string comparisons.
#[derive(Debug, Clone, Default)]
struct Node {
    literals: Vec<(Box<str>, Node)>,
    suffixed: Vec<(Box<str>, Node)>,
    param: Option<Box<Node>>,
    ends: Vec<usize>,
}

impl Node {
    fn insert(
        &mut self,
        segments: &[Segment],
        index: usize,
        routes: &[Route],
    ) -> Result<(), RoutesError> {
        let Some((first, rest)) = segments.split_first() else {
            let new = &routes[index];
            for &other in &self.ends {
                let existing = &routes[other];
                if let Some(method) = new.methods.iter().find(|m| existing.methods.contains(m)) {
                    return Err(RoutesError::Conflict {
                        id: new.id.to_string(),
                        template: new.path.clone(),
                        other: existing.id.to_string(),
                        other_template: existing.path.clone(),
                        method: method.to_string(),
                    });
                }
            }
            self.ends.push(index);
            return Ok(());
        };
        let child = match first {
            Segment::Literal(text) => match self.literals.iter().position(|(k, _)| k == text) {
                Some(i) => &mut self.literals[i].1,
                None => {
                    self.literals.push((text.clone(), Node::default()));
                    let last = self.literals.len() - 1;
                    &mut self.literals[last].1
                }
            },
            Segment::Param { suffix } if suffix.is_empty() => {
                self.param.get_or_insert_with(Box::default).as_mut()
            }
            Segment::Param { suffix } => {
                // Longest suffix first (then by text), so the most specific is tried first.
                let order = |k: &str| suffix.len().cmp(&k.len()).then_with(|| k.cmp(suffix));
                match self.suffixed.binary_search_by(|(k, _)| order(k)) {
                    Ok(i) => &mut self.suffixed[i].1,
                    Err(i) => {
                        self.suffixed.insert(i, (suffix.clone(), Node::default()));
                        &mut self.suffixed[i].1
                    }
                }
            }
        };
        child.insert(rest, index, routes)
    }

    /// `rest` is the path after the `/` that leads to this node's children.
    fn find(&self, rest: &str, method: &Method, routes: &[Route]) -> Option<usize> {
        let bytes = rest.as_bytes();
        let end = bytes.iter().position(|&b| b == b'/').unwrap_or(bytes.len());
        if end == 0 {
            return None;
        }
        let segment = &bytes[..end];
        // `rest[end]` is '/' (ASCII) when present, so both slices are on char boundaries.
        let tail = (end < bytes.len()).then(|| &rest[end + 1..]);
        let descend = |child: &Node| match tail {
            Some(tail) => child.find(tail, method, routes),
            None => child.end(method, routes),
        };
        let literal = self
            .literals
            .iter()
            .find(|(k, _)| k.len() == segment.len() && k.as_bytes() == segment);
        if let Some((_, child)) = literal {
            if let Some(found) = descend(child) {
                return Some(found);
            }
        }
        for (suffix, child) in &self.suffixed {
            if segment.len() > suffix.len() && segment.ends_with(suffix.as_bytes()) {
                if let Some(found) = descend(child) {
                    return Some(found);
                }
            }
        }
        self.param.as_deref().and_then(descend)
    }

    /// The route ending here for `method`: an explicit listing first, then `HEAD` via `GET`.
    fn end(&self, method: &Method, routes: &[Route]) -> Option<usize> {
        let explicit = self
            .ends
            .iter()
            .copied()
            .find(|&i| routes[i].methods.contains(method));
        explicit.or_else(|| {
            (*method == Method::HEAD)
                .then(|| self.ends.iter().copied().find(|&i| routes[i].allows_get()))
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> RouteTable {
        RouteTable::from_toml(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn load_err(text: &str) -> RoutesError {
        match RouteTable::from_toml(text) {
            Ok(t) => panic!("accepted: {:?}", t.routes()),
            Err(e) => e,
        }
    }

    fn found<'t>(t: &'t RouteTable, method: &str, path: &str) -> Option<&'t str> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        t.find(&method, path).map(|r| &*r.id)
    }

    const PRECEDENCE: &str = r#"
        [[route]]
        id = "agents.get"
        method = "GET"
        path = "/api/agents/{id}"

        [[route]]
        id = "agents.me"
        method = "GET"
        path = "/api/agents/me"

        [[route]]
        id = "agents.update"
        method = "PATCH"
        path = "/api/agents/{id}"

        [[route]]
        id = "x.param-then-literal"
        method = "GET"
        path = "/x/{a}/b/c"

        [[route]]
        id = "x.literal-then-param"
        method = "GET"
        path = "/x/a/{b}/{c}"

        [[route]]
        id = "files.any"
        method = "GET"
        path = "/files/{name}"

        [[route]]
        id = "files.txt"
        method = "GET"
        path = "/files/{name}.txt"

        [[route]]
        id = "files.min-txt"
        method = "GET"
        path = "/files/{name}.min.txt"

        [[route]]
        id = "files.literal"
        method = "GET"
        path = "/files/readme.txt"
    "#;

    #[test]
    fn literal_beats_parameter_in_the_same_position() {
        let t = table(PRECEDENCE);
        assert_eq!(found(&t, "GET", "/api/agents/me"), Some("agents.me"));
        assert_eq!(found(&t, "GET", "/api/agents/a1"), Some("agents.get"));
        assert_eq!(found(&t, "GET", "/api/agents/mE"), Some("agents.get"));
    }

    #[test]
    fn precedence_is_decided_left_to_right() {
        let t = table(PRECEDENCE);
        // Both match; the leftmost difference (literal `a` vs `{a}`) decides.
        assert_eq!(found(&t, "GET", "/x/a/b/c"), Some("x.literal-then-param"));
        // Backtracks into the parameter branch when the literal branch cannot finish.
        assert_eq!(found(&t, "GET", "/x/q/b/c"), Some("x.param-then-literal"));
    }

    #[test]
    fn method_filters_before_precedence() {
        let t = table(PRECEDENCE);
        // `GET /api/agents/me` is a literal rule, but PATCH is only allowed on `{id}`.
        assert_eq!(found(&t, "PATCH", "/api/agents/me"), Some("agents.update"));
        assert_eq!(found(&t, "DELETE", "/api/agents/me"), None);
    }

    #[test]
    fn parameter_with_suffix_is_more_specific_than_bare_parameter() {
        let t = table(PRECEDENCE);
        assert_eq!(found(&t, "GET", "/files/readme.txt"), Some("files.literal"));
        assert_eq!(found(&t, "GET", "/files/a.min.txt"), Some("files.min-txt"));
        assert_eq!(found(&t, "GET", "/files/a.txt"), Some("files.txt"));
        assert_eq!(found(&t, "GET", "/files/a.json"), Some("files.any"));
        // The parameter part of `{name}.txt` must be non-empty: `.txt` alone is a bare `{name}`.
        assert_eq!(found(&t, "GET", "/files/.txt"), Some("files.any"));
    }

    #[test]
    fn parameter_with_suffix_requires_a_non_empty_parameter() {
        let t = table(
            r#"
            [[route]]
            id = "llms.adapter"
            method = "GET"
            path = "/llms/agent-configuration/{name}.txt"
            "#,
        );
        assert_eq!(
            found(&t, "GET", "/llms/agent-configuration/codex.txt"),
            Some("llms.adapter")
        );
        for path in [
            "/llms/agent-configuration/.txt",
            "/llms/agent-configuration/codex",
            "/llms/agent-configuration/codex.txt/x",
            "/llms/agent-configuration/codex.TXT",
            "/llms/agent-configuration/codex%2etxt",
        ] {
            assert_eq!(found(&t, "GET", path), None, "{path}");
        }
    }

    #[test]
    fn parameters_take_exactly_one_non_empty_segment() {
        let t = table(
            r#"
            [[route]]
            id = "comments"
            method = "GET"
            path = "/api/issues/{id}/comments"
            "#,
        );
        assert_eq!(found(&t, "GET", "/api/issues/1/comments"), Some("comments"));
        for path in [
            "/api/issues//comments",
            "/api/issues/1/2/comments",
            "/api/issues/comments",
            "/api/issues/1/comments/",
            "/api/issues/1/comments/x",
            "/api/issues/1/commentsx",
            "/api/issues/1",
            "api/issues/1/comments",
            "",
            "/",
        ] {
            assert_eq!(found(&t, "GET", path), None, "{path:?}");
        }
    }

    #[test]
    fn literals_match_raw_bytes_only() {
        let t = table(PRECEDENCE);
        // `%61` is `a`, but literals are compared undecoded.
        assert_eq!(found(&t, "GET", "/api/%61gents/me"), None);
        assert_eq!(found(&t, "GET", "/API/agents/me"), None);
        // In a parameter position an escape is just part of the value.
        assert_eq!(found(&t, "GET", "/api/agents/m%65"), Some("agents.get"));
    }

    #[test]
    fn head_matches_where_get_is_allowed() {
        let t = table(
            r#"
            [[route]]
            id = "read"
            method = "GET"
            path = "/a/{x}"

            [[route]]
            id = "write"
            methods = ["POST", "PUT"]
            path = "/b/{x}"

            [[route]]
            id = "explicit-head"
            method = "HEAD"
            path = "/c/{x}"

            [[route]]
            id = "get-c"
            method = "GET"
            path = "/c/{x}"
            "#,
        );
        assert_eq!(found(&t, "HEAD", "/a/1"), Some("read"));
        assert_eq!(found(&t, "HEAD", "/b/1"), None);
        assert_eq!(found(&t, "PUT", "/b/1"), Some("write"));
        assert_eq!(found(&t, "HEAD", "/c/1"), Some("explicit-head"));
        assert_eq!(found(&t, "GET", "/c/1"), Some("get-c"));
        assert!(t.routes()[0].allows(&Method::HEAD));
        assert!(!t.routes()[1].allows(&Method::HEAD));
    }

    #[test]
    fn paths_key_expands_into_one_route_per_template() {
        let t = table(
            r#"
            [[route]]
            id = "svc.control"
            method = "POST"
            paths = ["/svc/{id}/start", "/svc/{id}/stop"]
            content_types = ["Application/JSON", "multipart/form-data"]
            max_body_bytes = 10
            "#,
        );
        assert_eq!(t.rule_count(), 1);
        assert_eq!(t.routes().len(), 2);
        assert_eq!(t.pair_count(), 2);
        assert_eq!(found(&t, "POST", "/svc/1/stop"), Some("svc.control"));
        let r = &t.routes()[1];
        assert_eq!(r.path, "/svc/{id}/stop");
        assert_eq!(
            r.content_types.as_deref(),
            Some(
                &[
                    "application/json".to_owned(),
                    "multipart/form-data".to_owned()
                ][..]
            )
        );
        assert_eq!(r.max_body_bytes, Some(10));
    }

    #[test]
    fn refuses_conflicting_templates() {
        let conflicts = [
            // Same shape, different parameter names.
            ("GET", "/a/{x}/b", "GET", "/a/{y}/b"),
            // Shared method among several.
            ("GET", "/a/{x}", "[\"POST\", \"GET\"]", "/a/{id}"),
            ("GET", "/a/{x}.txt", "GET", "/a/{y}.txt"),
            ("GET", "/a/b", "GET", "/a/b"),
        ];
        for (m1, p1, m2, p2) in conflicts {
            let key2 = if m2.starts_with('[') {
                format!("methods = {m2}")
            } else {
                format!("method = \"{m2}\"")
            };
            let text = format!(
                "[[route]]\nid = \"one\"\nmethod = \"{m1}\"\npath = \"{p1}\"\n\n\
                 [[route]]\nid = \"two\"\n{key2}\npath = \"{p2}\"\n"
            );
            let e = load_err(&text);
            assert!(matches!(e, RoutesError::Conflict { .. }), "{text}: {e}");
            let msg = e.to_string();
            assert!(msg.contains("\"two\"") && msg.contains("\"one\""), "{msg}");
        }
        // A template repeated within one rule's `paths` conflicts with itself.
        let e = load_err(
            "[[route]]\nid = \"one\"\nmethod = \"GET\"\npaths = [\"/a/{x}\", \"/a/{y}\"]\n",
        );
        assert!(matches!(e, RoutesError::Conflict { .. }), "{e}");
    }

    #[test]
    fn accepts_overlapping_templates_that_differ_in_kind_or_method() {
        table(
            r#"
            [[route]]
            id = "a"
            method = "GET"
            path = "/a/{x}"
            [[route]]
            id = "b"
            method = "GET"
            path = "/a/{x}.txt"
            [[route]]
            id = "c"
            method = "GET"
            path = "/a/me"
            [[route]]
            id = "d"
            method = "PATCH"
            path = "/a/{x}"
            [[route]]
            id = "e"
            method = "HEAD"
            path = "/a/{x}"
            "#,
        );
    }

    #[test]
    fn refuses_invalid_files_with_a_one_line_error_naming_the_rule() {
        let rule = |body: &str| format!("[[route]]\nid = \"r.1\"\n{body}\n");
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no [[route]]"),
            ("[[route]]\nid = \"x\"\nmethod = \"GET\"\npath = \"/a\"\ncolour = \"red\"\n".into(), "colour"),
            ("routes = []\n".into(), "routes"),
            ("[[route]]\nmethod = \"GET\"\npath = \"/a\"\n".into(), "id"),
            ("[[route]]\nid = \"x\"\nmethod = \"GET\"\npath = \"/a\"\n[[route]]\nid = \"x\"\nmethod = \"POST\"\npath = \"/b\"\n".into(), "\"x\" is used more than once"),
            ("[[route]]\nid = \"has space\"\nmethod = \"GET\"\npath = \"/a\"\n".into(), "\"has space\""),
            ("[[route]]\nid = \"\"\nmethod = \"GET\"\npath = \"/a\"\n".into(), "invalid id"),
            (rule("path = \"/a\""), "exactly one of `method` and `methods`"),
            (rule("method = \"GET\"\nmethods = [\"GET\"]\npath = \"/a\""), "exactly one of `method`"),
            (rule("methods = []\npath = \"/a\""), "exactly one of `method`"),
            (rule("method = \"get\"\npath = \"/a\""), "\"get\""),
            (rule("method = \"TRACE\"\npath = \"/a\""), "always refused"),
            (rule("method = \"CONNECT\"\npath = \"/a\""), "always refused"),
            (rule("method = \"G T\"\npath = \"/a\""), "\"G T\""),
            (rule("methods = [\"GET\", \"GET\"]\npath = \"/a\""), "listed twice"),
            (rule("method = \"GET\""), "exactly one of `path` and `paths`"),
            (rule("method = \"GET\"\npath = \"/a\"\npaths = [\"/b\"]"), "exactly one of `path`"),
            (rule("method = \"GET\"\npaths = []"), "exactly one of `path`"),
            (rule("method = \"GET\"\npath = \"a/b\""), "must start with '/'"),
            (rule("method = \"GET\"\npath = \"/\""), "at least one segment"),
            (rule("method = \"GET\"\npath = \"/a//b\""), "empty segment"),
            (rule("method = \"GET\"\npath = \"/a/\""), "empty segment"),
            (rule("method = \"GET\"\npath = \"/a/../b\""), "can never match"),
            (rule("method = \"GET\"\npath = \"/a/{x\""), "closing"),
            (rule("method = \"GET\"\npath = \"/a/{}\""), "parameter names"),
            (rule("method = \"GET\"\npath = \"/a/{1x}\""), "parameter names"),
            (rule("method = \"GET\"\npath = \"/a/x{y}\""), "must start its segment"),
            (rule("method = \"GET\"\npath = \"/a/{x}{y}\""), "literals use only"),
            (rule("method = \"GET\"\npath = \"/a/%61\""), "literals use only"),
            (rule("method = \"GET\"\npath = \"/a b\""), "literals use only"),
            (rule("method = \"GET\"\npath = \"/a?x=1\""), "literals use only"),
            (rule("method = \"GET\"\npath = \"/a\"\ncontent_types = []"), "empty list"),
            (rule("method = \"GET\"\npath = \"/a\"\ncontent_types = [\"json\"]"), "\"json\""),
            (rule("method = \"GET\"\npath = \"/a\"\ncontent_types = [\"text/plain; charset=utf-8\"]"), "without parameters"),
            (rule("method = \"GET\"\npath = \"/a\"\ncontent_types = [\"*/*\"]"), "\"*/*\""),
            (rule("method = \"GET\"\npath = \"/a\"\ncontent_types = [\"text/*\"]"), "\"text/*\""),
            (rule("method = \"GET\"\npath = \"/a\"\nmax_body_bytes = -1"), "line"),
            (rule("method = \"GET\"\npath = \"/a\"\nmax_body_bytes = \"1MB\""), "line"),
        ];
        for (text, needle) in cases {
            let e = load_err(&text);
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line error for {text:?}: {msg}");
            assert!(msg.contains(needle), "{text:?}: {msg:?} lacks {needle:?}");
        }
    }

    #[test]
    fn syntax_errors_carry_the_line_number() {
        let e = load_err("[[route]]\nid = \"x\"\nmethod = \"GET\"\npath = \"/a\"\ncolour = 1\n");
        assert!(matches!(e, RoutesError::Syntax { line: 5, .. }), "{e:?}");
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn builtin_table_has_68_rules_and_77_pairs() {
        let t = RouteTable::builtin();
        assert_eq!(t.rule_count(), 68);
        assert_eq!(t.pair_count(), 77);
        assert_eq!(builtin_cases::ALLOWED.len(), 77);
    }

    #[test]
    fn builtin_table_is_exactly_the_spec_list() {
        let t = RouteTable::builtin();
        let mut in_table: Vec<(String, String)> = t
            .routes()
            .iter()
            .flat_map(|r| r.methods.iter().map(|m| (m.to_string(), r.path.clone())))
            .collect();
        let mut in_spec: Vec<(String, String)> = builtin_cases::ALLOWED
            .iter()
            .map(|&(m, template, _, _)| (m.to_owned(), template.to_owned()))
            .collect();
        in_table.sort();
        in_spec.sort();
        assert_eq!(in_table, in_spec);
    }

    #[test]
    fn builtin_table_allows_every_listed_pair() {
        let t = RouteTable::builtin();
        for &(method, template, path, id) in builtin_cases::ALLOWED {
            let route = t
                .find(&Method::from_bytes(method.as_bytes()).unwrap(), path)
                .unwrap_or_else(|| panic!("{method} {path} is denied"));
            assert_eq!(
                (&*route.id, route.path.as_str()),
                (id, template),
                "{method} {path}"
            );
            if method == "GET" {
                assert_eq!(found(&t, "HEAD", path), Some(id), "HEAD {path}");
            }
        }
    }

    #[test]
    fn builtin_table_denies_the_spec_examples() {
        let t = RouteTable::builtin();
        for &(method, path) in builtin_cases::DENIED {
            assert_eq!(found(&t, method, path), None, "{method} {path} is allowed");
        }
    }

    #[test]
    fn builtin_upload_route_alone_accepts_multipart() {
        let t = RouteTable::builtin();
        for route in t.routes() {
            if &*route.id == "issues.attachments.upload" {
                assert_eq!(
                    route.content_types.as_deref(),
                    Some(&["multipart/form-data".to_owned()][..])
                );
            } else {
                assert_eq!(route.content_types, None, "{}", route.id);
            }
            assert_eq!(route.max_body_bytes, None, "{}", route.id);
        }
    }
}

/// docs/reference.md §4.3 as test data, shared with the `evaluate` tests in `policy::tests`.
#[cfg(test)]
pub(crate) mod builtin_cases {
    /// (method, template, a concrete path, expected route id): every pair of docs/reference.md §4.3.
    pub(crate) const ALLOWED: &[(&str, &str, &str, &str)] = &[
        (
            "POST",
            "/runtime-tools/github/credentials",
            "/runtime-tools/github/credentials",
            "github.credentials.create",
        ),
        ("GET", "/api/agents/me", "/api/agents/me", "agents.me.get"),
        (
            "GET",
            "/api/agents/me/inbox-lite",
            "/api/agents/me/inbox-lite",
            "agents.me.inbox-lite.get",
        ),
        (
            "GET",
            "/api/agents/me/inbox/mine",
            "/api/agents/me/inbox/mine",
            "agents.me.inbox.mine.list",
        ),
        (
            "GET",
            "/api/agents/{agent}",
            "/api/agents/0b5c8f2e-agent",
            "agents.get",
        ),
        (
            "GET",
            "/api/agents/{agent}/skills",
            "/api/agents/a1/skills",
            "agents.skills.list",
        ),
        (
            "POST",
            "/api/agents/{agent}/skills/sync",
            "/api/agents/a1/skills/sync",
            "agents.skills.sync",
        ),
        (
            "PATCH",
            "/api/agents/{agent}/instructions-path",
            "/api/agents/a1/instructions-path",
            "agents.instructions-path.update",
        ),
        (
            "POST",
            "/api/companies/{company}/agent-commentary",
            "/api/companies/c1/agent-commentary",
            "companies.agent-commentary.create",
        ),
        (
            "GET",
            "/api/openapi.json",
            "/api/openapi.json",
            "openapi.get",
        ),
        (
            "GET",
            "/api/companies/{company}",
            "/api/companies/c1",
            "companies.get",
        ),
        (
            "GET",
            "/api/companies/{company}/dashboard",
            "/api/companies/c1/dashboard",
            "companies.dashboard.get",
        ),
        (
            "GET",
            "/api/companies/{company}/agents",
            "/api/companies/c1/agents",
            "companies.agents.list",
        ),
        (
            "GET",
            "/api/companies/{company}/issues",
            "/api/companies/c1/issues",
            "companies.issues.list",
        ),
        (
            "GET",
            "/api/companies/{company}/projects",
            "/api/companies/c1/projects",
            "companies.projects.list",
        ),
        (
            "GET",
            "/api/companies/{company}/goals",
            "/api/companies/c1/goals",
            "companies.goals.list",
        ),
        (
            "GET",
            "/api/companies/{company}/org",
            "/api/companies/c1/org",
            "companies.org.get",
        ),
        (
            "GET",
            "/api/companies/{company}/approvals",
            "/api/companies/c1/approvals",
            "companies.approvals.list",
        ),
        (
            "GET",
            "/api/companies/{company}/routines",
            "/api/companies/c1/routines",
            "companies.routines.list",
        ),
        (
            "GET",
            "/api/companies/{company}/skills",
            "/api/companies/c1/skills",
            "companies.skills.list",
        ),
        (
            "GET",
            "/api/projects/{project}",
            "/api/projects/p1",
            "projects.get",
        ),
        ("GET", "/api/goals/{goal}", "/api/goals/g1", "goals.get"),
        (
            "GET",
            "/api/companies/{company}/email/inboxes",
            "/api/companies/c1/email/inboxes",
            "companies.email.inboxes.list",
        ),
        (
            "GET",
            "/api/companies/{company}/email/tasks/{task}",
            "/api/companies/c1/email/tasks/t1",
            "companies.email.tasks.get",
        ),
        (
            "GET",
            "/api/companies/{company}/email/deliveries/{delivery}",
            "/api/companies/c1/email/deliveries/d1",
            "companies.email.deliveries.get",
        ),
        (
            "POST",
            "/api/companies/{company}/email/send",
            "/api/companies/c1/email/send",
            "companies.email.send",
        ),
        (
            "GET",
            "/api/issues/{issue}",
            "/api/issues/PAP-42",
            "issues.get",
        ),
        (
            "GET",
            "/api/issues/{issue}/heartbeat-context",
            "/api/issues/i1/heartbeat-context",
            "issues.heartbeat-context.get",
        ),
        (
            "GET",
            "/api/issues/{issue}/comments",
            "/api/issues/i1/comments",
            "issues.comments.read",
        ),
        (
            "GET",
            "/api/issues/{issue}/comments/{comment}",
            "/api/issues/i1/comments/m1",
            "issues.comments.read",
        ),
        (
            "POST",
            "/api/issues/{issue}/comments",
            "/api/issues/i1/comments",
            "issues.comments.create",
        ),
        (
            "GET",
            "/api/issues/{issue}/documents",
            "/api/issues/i1/documents",
            "issues.documents.read",
        ),
        (
            "GET",
            "/api/issues/{issue}/documents/{key}",
            "/api/issues/i1/documents/plan",
            "issues.documents.read",
        ),
        (
            "GET",
            "/api/issues/{issue}/documents/{key}/revisions",
            "/api/issues/i1/documents/plan/revisions",
            "issues.documents.revisions.list",
        ),
        (
            "PUT",
            "/api/issues/{issue}/documents/{key}",
            "/api/issues/i1/documents/plan",
            "issues.documents.upsert",
        ),
        (
            "POST",
            "/api/issues/{issue}/checkout",
            "/api/issues/i1/checkout",
            "issues.checkout",
        ),
        (
            "POST",
            "/api/issues/{issue}/release",
            "/api/issues/i1/release",
            "issues.release",
        ),
        (
            "PATCH",
            "/api/issues/{issue}",
            "/api/issues/i1",
            "issues.update",
        ),
        (
            "GET",
            "/api/issues/{issue}/approvals",
            "/api/issues/i1/approvals",
            "issues.approvals.list",
        ),
        (
            "GET",
            "/api/issues/{issue}/attachments",
            "/api/issues/i1/attachments",
            "issues.attachments.list",
        ),
        (
            "POST",
            "/api/companies/{company}/issues/{issue}/attachments",
            "/api/companies/c1/issues/i1/attachments",
            "issues.attachments.upload",
        ),
        (
            "GET",
            "/api/attachments/{attachment}/content",
            "/api/attachments/f1/content",
            "attachments.content.get",
        ),
        (
            "GET",
            "/api/issues/{issue}/work-products",
            "/api/issues/i1/work-products",
            "issues.work-products.list",
        ),
        (
            "POST",
            "/api/issues/{issue}/work-products",
            "/api/issues/i1/work-products",
            "issues.work-products.create",
        ),
        (
            "PATCH",
            "/api/work-products/{work_product}",
            "/api/work-products/w1",
            "work-products.update",
        ),
        (
            "GET",
            "/api/issues/{issue}/interactions",
            "/api/issues/i1/interactions",
            "issues.interactions.read",
        ),
        (
            "GET",
            "/api/issues/{issue}/interactions/{interaction}",
            "/api/issues/i1/interactions/n1",
            "issues.interactions.read",
        ),
        (
            "POST",
            "/api/issues/{issue}/interactions",
            "/api/issues/i1/interactions",
            "issues.interactions.create",
        ),
        (
            "POST",
            "/api/issues/{issue}/interactions/{interaction}/accept",
            "/api/issues/i1/interactions/n1/accept",
            "issues.interactions.resolve",
        ),
        (
            "POST",
            "/api/issues/{issue}/interactions/{interaction}/reject",
            "/api/issues/i1/interactions/n1/reject",
            "issues.interactions.resolve",
        ),
        (
            "POST",
            "/api/issues/{issue}/interactions/{interaction}/respond",
            "/api/issues/i1/interactions/n1/respond",
            "issues.interactions.resolve",
        ),
        (
            "POST",
            "/api/issues/{issue}/interactions/{interaction}/verdicts",
            "/api/issues/i1/interactions/n1/verdicts",
            "issues.interactions.resolve",
        ),
        (
            "POST",
            "/api/issues/{issue}/interactions/{interaction}/withdraw",
            "/api/issues/i1/interactions/n1/withdraw",
            "issues.interactions.resolve",
        ),
        (
            "POST",
            "/api/companies/{company}/issues",
            "/api/companies/c1/issues",
            "companies.issues.create",
        ),
        (
            "GET",
            "/llms/agent-configuration.txt",
            "/llms/agent-configuration.txt",
            "llms.agent-configuration.get",
        ),
        (
            "GET",
            "/llms/agent-configuration/{adapter}.txt",
            "/llms/agent-configuration/codex_local.txt",
            "llms.agent-configuration.adapter.get",
        ),
        (
            "GET",
            "/llms/agent-icons.txt",
            "/llms/agent-icons.txt",
            "llms.agent-icons.get",
        ),
        (
            "GET",
            "/api/companies/{company}/agent-configurations",
            "/api/companies/c1/agent-configurations",
            "companies.agent-configurations.list",
        ),
        (
            "POST",
            "/api/companies/{company}/agent-hires",
            "/api/companies/c1/agent-hires",
            "companies.agent-hires.create",
        ),
        (
            "POST",
            "/api/issues/{issue}/approvals",
            "/api/issues/i1/approvals",
            "issues.approvals.create",
        ),
        (
            "GET",
            "/api/approvals/{approval}",
            "/api/approvals/p1",
            "approvals.get",
        ),
        (
            "GET",
            "/api/approvals/{approval}/issues",
            "/api/approvals/p1/issues",
            "approvals.issues.list",
        ),
        (
            "GET",
            "/api/approvals/{approval}/comments",
            "/api/approvals/p1/comments",
            "approvals.comments.list",
        ),
        (
            "POST",
            "/api/approvals/{approval}/comments",
            "/api/approvals/p1/comments",
            "approvals.comments.create",
        ),
        (
            "POST",
            "/api/companies/{company}/approvals",
            "/api/companies/c1/approvals",
            "companies.approvals.create",
        ),
        (
            "GET",
            "/api/execution-workspaces/{workspace}",
            "/api/execution-workspaces/e1",
            "execution-workspaces.get",
        ),
        (
            "POST",
            "/api/execution-workspaces/{workspace}/runtime-services/start",
            "/api/execution-workspaces/e1/runtime-services/start",
            "execution-workspaces.runtime-services.control",
        ),
        (
            "POST",
            "/api/execution-workspaces/{workspace}/runtime-services/stop",
            "/api/execution-workspaces/e1/runtime-services/stop",
            "execution-workspaces.runtime-services.control",
        ),
        (
            "POST",
            "/api/execution-workspaces/{workspace}/runtime-services/restart",
            "/api/execution-workspaces/e1/runtime-services/restart",
            "execution-workspaces.runtime-services.control",
        ),
        (
            "GET",
            "/api/routines/{routine}",
            "/api/routines/r1",
            "routines.get",
        ),
        (
            "GET",
            "/api/routines/{routine}/runs",
            "/api/routines/r1/runs",
            "routines.runs.list",
        ),
        (
            "POST",
            "/api/companies/{company}/routines",
            "/api/companies/c1/routines",
            "companies.routines.create",
        ),
        (
            "PATCH",
            "/api/routines/{routine}",
            "/api/routines/r1",
            "routines.update",
        ),
        (
            "POST",
            "/api/routines/{routine}/run",
            "/api/routines/r1/run",
            "routines.run",
        ),
        (
            "POST",
            "/api/routines/{routine}/triggers",
            "/api/routines/r1/triggers",
            "routines.triggers.create",
        ),
        (
            "PATCH",
            "/api/routine-triggers/{trigger}",
            "/api/routine-triggers/t1",
            "routine-triggers.update",
        ),
        (
            "DELETE",
            "/api/routine-triggers/{trigger}",
            "/api/routine-triggers/t1",
            "routine-triggers.delete",
        ),
    ];

    /// Requests docs/reference.md §4.3 names as denied, plus near misses of allowed templates.
    pub(crate) const DENIED: &[(&str, &str)] = &[
        // Direct agent creation.
        ("POST", "/api/companies/c1/agents"),
        // Secrets, every route.
        ("GET", "/api/companies/c1/secrets"),
        ("POST", "/api/companies/c1/secrets"),
        ("GET", "/api/secrets/s1"),
        ("PATCH", "/api/secrets/s1"),
        ("DELETE", "/api/secrets/s1"),
        ("POST", "/api/secrets/s1/rotate"),
        ("GET", "/api/companies/c1/secret-providers"),
        // Deciding approvals.
        ("POST", "/api/approvals/p1/approve"),
        ("POST", "/api/approvals/p1/reject"),
        ("POST", "/api/approvals/p1/request-revision"),
        ("POST", "/api/approvals/p1/resubmit"),
        // Agent pause, terminate, keys.
        ("POST", "/api/agents/a1/pause"),
        ("POST", "/api/agents/a1/resume"),
        ("POST", "/api/agents/a1/terminate"),
        ("GET", "/api/agents/a1/keys"),
        ("POST", "/api/agents/a1/keys"),
        ("DELETE", "/api/agents/a1/keys/k1"),
        ("PATCH", "/api/agents/a1"),
        ("DELETE", "/api/agents/a1"),
        // Company exports, imports, archive, logo.
        ("POST", "/api/companies/c1/export"),
        ("POST", "/api/companies/c1/exports"),
        ("GET", "/api/companies/c1/exports"),
        ("POST", "/api/companies/c1/imports"),
        ("POST", "/api/companies/c1/imports/preview"),
        ("POST", "/api/companies/c1/archive"),
        ("POST", "/api/companies/c1/logo"),
        ("PATCH", "/api/companies/c1"),
        ("DELETE", "/api/companies/c1"),
        ("GET", "/api/companies"),
        ("POST", "/api/companies"),
        // DELETE of documents, approvals, work products.
        ("DELETE", "/api/issues/i1/documents/plan"),
        ("DELETE", "/api/approvals/p1"),
        ("DELETE", "/api/work-products/w1"),
        ("DELETE", "/api/issues/i1"),
        ("DELETE", "/api/routines/r1"),
        // Near misses of allowed templates.
        ("GET", "/api/agents/me/inbox"),
        ("POST", "/api/agents/a1/skills"),
        ("PUT", "/api/issues/i1/comments"),
        ("GET", "/api/issues/i1/comments/m1/replies"),
        ("GET", "/api/issues/i1/documents/plan/revisions/r1"),
        ("POST", "/api/issues/i1/interactions/n1/approve"),
        ("GET", "/api/issues/i1/interactions/n1/accept"),
        (
            "POST",
            "/api/execution-workspaces/e1/runtime-services/delete",
        ),
        ("GET", "/api/execution-workspaces/e1/runtime-services/start"),
        ("POST", "/api/companies/c1/issues/i1/attachments/x"),
        ("GET", "/api/companies/c1/issues/i1/attachments"),
        ("DELETE", "/api/attachments/f1"),
        ("GET", "/llms/agent-configuration/.txt"),
        ("GET", "/llms/agent-configuration/codex"),
        ("GET", "/api/openapi%2ejson"),
        ("GET", "/api/%61gents/me"),
        ("GET", "/api/agents/me/"),
        ("GET", "/api"),
        ("GET", "/"),
        ("GET", "/api/health"),
        ("POST", "/api/issues/i1/checkout/x"),
        ("OPTIONS", "/api/agents/me"),
        ("HEAD", "/api/issues/i1/checkout"),
    ];
}
