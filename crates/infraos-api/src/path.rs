//! Request paths of the API: the URL constants, and a request's method and path parsed once,
//! at the border, into a closed type that the server's router, its RBAC and node authorizers
//! and the client all share.
//!
//! ```text
//!  /apis/infraos.io/v1/<plural>[/<name>[/<sub>]]                     cluster scope
//!  /apis/infraos.io/v1/namespaces/<project>/<plural>[/<name>[/<sub>]] a project's scope
//!  /apis/infraos.io/v1/<plural>:batchCreate                          POST: several creates
//!  /agent/v1/…                                                       the agent API
//!  /openapi/v3                                                       the OpenAPI document
//! ```
//! Path segments are percent-decoded once, here, exactly as the router's own extractors do,
//! so what is authorized is what is served. The query is the server's to decode (it knows the
//! parameters); it hands the one fact a path's meaning depends on, whether a GET is a watch,
//! to [`ApiRequest::parse`].

use crate::envelope::KindInfo;
use crate::kinds::kind_by_plural;

/// Where the `infraos.io/v1` API is served.
pub const PREFIX: &str = "/apis/infraos.io/v1";
/// Where the agent API is served (nodes only).
pub const AGENT_PREFIX: &str = "/agent/v1";
/// The OpenAPI document.
pub const OPENAPI: &str = "/openapi/v3";
/// The suffix of a collection's plural that makes a POST a batch create (Google AIP-233).
pub const BATCH_CREATE: &str = ":batchCreate";

/// What a path names, before the name: a kind, or one of the server's own collections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Kind(&'static KindInfo),
    /// `/auditrecords[/head]`: the audit chain.
    AuditRecords,
    /// `/tokens[/<id>]`: API tokens.
    Tokens,
    /// `/jointokens[/<id>]`: agent bootstrap tokens.
    JoinTokens,
    /// `/signingkey`: the server's public key, for anyone signed in.
    SigningKey,
}

/// The server's own collections that role rules name (by [`Resource::rule_kind`]) besides the
/// kinds: the one list of them, from which RBAC's `EXTRA_RULE_KINDS` and its rule-kind
/// canonicalisation are built. `/signingkey` is not among them: anyone signed in reads it.
pub const RULE_COLLECTIONS: [Resource; 3] = [
    Resource::AuditRecords,
    Resource::Tokens,
    Resource::JoinTokens,
];

impl Resource {
    /// The resource a URL plural names; `None` for one the server does not serve.
    pub fn from_plural(plural: &str) -> Option<Resource> {
        match plural {
            "auditrecords" => Some(Resource::AuditRecords),
            "tokens" => Some(Resource::Tokens),
            "jointokens" => Some(Resource::JoinTokens),
            other => kind_by_plural(other).map(Resource::Kind),
        }
    }

    /// Its name in role rules: the kind, or `AuditRecord`, `Token`, `JoinToken`.
    pub const fn rule_kind(&self) -> &'static str {
        match self {
            Resource::Kind(info) => info.kind,
            Resource::AuditRecords => "AuditRecord",
            Resource::Tokens => "Token",
            Resource::JoinTokens => "JoinToken",
            Resource::SigningKey => "SigningKey",
        }
    }

    /// Its plural in URLs.
    pub fn plural(&self) -> &'static str {
        match self {
            Resource::Kind(info) => info.plural,
            Resource::AuditRecords => "auditrecords",
            Resource::Tokens => "tokens",
            Resource::JoinTokens => "jointokens",
            Resource::SigningKey => "signingkey",
        }
    }

    /// The kind, when the resource is one.
    pub fn kind(&self) -> Option<&'static KindInfo> {
        match self {
            Resource::Kind(info) => Some(info),
            _ => None,
        }
    }
}

/// The scope a path addresses: the whole cluster, or one project (a Kubernetes namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Project(String),
}

impl Scope {
    /// The project, for a project's scope.
    pub fn project(&self) -> Option<&str> {
        match self {
            Scope::Cluster => None,
            Scope::Project(p) => Some(p),
        }
    }
}

/// A path under [`PREFIX`]: resource, scope, name, subresource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiPath {
    pub resource: Resource,
    pub scope: Scope,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// `POST …/<plural>:batchCreate`.
    pub batch: bool,
}

/// What a request does, in RBAC's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    Renew,
    Release,
    Approve,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::Renew => "renew",
            Verb::Release => "release",
            Verb::Approve => "approve",
        }
    }

    /// The verb of a method on a collection or an object; `watch` is the decoded query's.
    fn of_method(method: &str, collection: bool, watch: bool) -> Verb {
        match method {
            "POST" => Verb::Create,
            "PUT" => Verb::Update,
            "PATCH" => Verb::Patch,
            "DELETE" => Verb::Delete,
            _ if collection && watch => Verb::Watch,
            _ if collection => Verb::List,
            _ => Verb::Get,
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to the API in RBAC terms: its path, and the verb and rule kind (`Claim`,
/// `Claim/log`, `Node/status`) it is authorized as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    pub path: ApiPath,
    pub verb: Verb,
    /// `None` when the subresource and method name nothing RBAC knows: no one is granted it,
    /// so a route added without its mapping is closed.
    pub rule_kind: Option<String>,
}

/// A request path, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Under [`AGENT_PREFIX`]: nodes only.
    Agent,
    /// [`OPENAPI`]: anyone signed in.
    OpenApi,
    Api(ApiRequest),
}

/// Why a path names nothing the API serves. The server answers each with a 404 that says so.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the server could not find the requested resource")]
    NotFound,
    /// A plural the server does not serve; `subresource` is kept so that a handler can name
    /// the first fault in the order it checks them.
    #[error("the server does not serve {plural:?} in infraos.io/v1")]
    UnknownResource {
        plural: String,
        subresource: Option<String>,
    },
    /// A segment whose escapes do not decode to UTF-8.
    #[error("invalid URL: a path segment is not UTF-8 once decoded")]
    NotUtf8,
}

impl ApiPath {
    /// The path of a kind's collection, or of one object: in `namespace` for namespaced
    /// kinds given one, else at cluster scope (for namespaced kinds, across every project).
    pub fn object(info: &'static KindInfo, namespace: Option<&str>, name: Option<&str>) -> Self {
        ApiPath {
            resource: Resource::Kind(info),
            scope: match namespace {
                Some(ns) if info.namespaced => Scope::Project(ns.to_string()),
                _ => Scope::Cluster,
            },
            name: name.map(str::to_string),
            subresource: None,
            batch: false,
        }
    }

    /// The same path with a subresource (`status`, `renew`, `log`).
    pub fn subresource(mut self, subresource: &str) -> Self {
        self.subresource = Some(subresource.to_string());
        self
    }

    /// The same collection path, as a batch create.
    pub fn batch(mut self) -> Self {
        self.batch = true;
        self
    }

    /// The project, when the path is in one.
    pub fn namespace(&self) -> Option<&str> {
        self.scope.project()
    }

    /// The URL path, segments percent-encoded (a valid name needs none).
    pub fn to_url(&self) -> String {
        url(
            self.resource.plural(),
            self.namespace(),
            self.batch,
            [self.name.as_deref(), self.subresource.as_deref()],
        )
    }

    /// Parses a path under [`PREFIX`]; `method` decides whether a `:batchCreate` suffix is
    /// one (only a POST to a collection).
    pub fn parse(method: &str, path: &str) -> Result<ApiPath, PathError> {
        let rest = path.strip_prefix(PREFIX).ok_or(PathError::NotFound)?;
        let rest = rest.strip_prefix('/').ok_or(PathError::NotFound)?;
        let raw: Vec<&str> = rest.split('/').collect();
        let mut parts = Vec::with_capacity(raw.len());
        for segment in &raw {
            parts.push(decode_segment(segment)?);
        }
        let (namespace, plural, name, sub) = match parts.as_slice() {
            [s] if s == "signingkey" => {
                return Ok(ApiPath {
                    resource: Resource::SigningKey,
                    scope: Scope::Cluster,
                    name: None,
                    subresource: None,
                    batch: false,
                });
            }
            [n, ns, plural] if n == "namespaces" => (Some(ns), plural, None, None),
            [n, ns, plural, name] if n == "namespaces" => (Some(ns), plural, Some(name), None),
            [n, ns, plural, name, sub] if n == "namespaces" => {
                (Some(ns), plural, Some(name), Some(sub))
            }
            [plural] => (None, plural, None, None),
            [plural, name] => (None, plural, Some(name), None),
            [plural, name, sub] => (None, plural, Some(name), Some(sub)),
            _ => return Err(PathError::NotFound),
        };
        let unknown = |plural: &str| PathError::UnknownResource {
            plural: plural.to_string(),
            subresource: sub.cloned(),
        };
        let (base, batch) = match plural.strip_suffix(BATCH_CREATE) {
            Some(p) if method == "POST" && name.is_none() => (p, true),
            Some(_) => return Err(unknown(plural)),
            None => (plural.as_str(), false),
        };
        let resource = Resource::from_plural(base).ok_or_else(|| unknown(base))?;
        Ok(ApiPath {
            resource,
            scope: namespace.map_or(Scope::Cluster, |ns| Scope::Project(ns.clone())),
            name: name.cloned(),
            subresource: sub.cloned(),
            batch,
        })
    }
}

impl ApiRequest {
    /// Parses a request: its method, its path, and whether its decoded query asks for a
    /// watch (the very value the handler acts on, so a list cannot be served as a watch).
    pub fn parse(method: &str, path: &str, watch: bool) -> Result<Target, PathError> {
        if path
            .strip_prefix(AGENT_PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
        {
            return Ok(Target::Agent);
        }
        if path == OPENAPI {
            return Ok(Target::OpenApi);
        }
        let path = ApiPath::parse(method, path)?;
        let collection = path.name.is_none();
        let mut verb = Verb::of_method(method, collection, watch);
        let base = path.resource.rule_kind();
        let rule_kind = match (&path.resource, path.subresource.as_deref()) {
            // `/auditrecords/head` and the like: reads of the chain.
            (Resource::AuditRecords, Some(_)) => {
                verb = Verb::Get;
                Some(base.to_string())
            }
            (_, None) => Some(base.to_string()),
            (_, Some("status")) => Some(format!("{base}/status")),
            (Resource::Kind(k), Some("log")) if k.kind == "Claim" => Some("Claim/log".into()),
            (Resource::Kind(k), Some("explain")) if k.kind == "Claim" => Some(base.to_string()),
            // Revoking and reinstating a node change its standing.
            (Resource::Kind(k), Some("revocation")) if k.kind == "Node" => {
                verb = Verb::Update;
                Some(base.to_string())
            }
            (Resource::Kind(k), Some(action @ ("renew" | "release")))
                if k.kind == "Claim" && method == "POST" =>
            {
                verb = if action == "renew" {
                    Verb::Renew
                } else {
                    Verb::Release
                };
                Some(base.to_string())
            }
            (Resource::Kind(k), Some("approve" | "refuse"))
                if k.kind == "Claim" && method == "POST" =>
            {
                verb = Verb::Approve;
                Some(base.to_string())
            }
            _ => None,
        };
        Ok(Target::Api(ApiRequest {
            path,
            verb,
            rule_kind,
        }))
    }
}

/// The URL of a kind's collection, or of one object: what [`ApiPath::object`] then
/// [`ApiPath::to_url`] give, for a kind known by reference only.
pub fn object_url(info: &KindInfo, namespace: Option<&str>, name: Option<&str>) -> String {
    let namespace = namespace.filter(|_| info.namespaced);
    url(info.plural, namespace, false, [name, None])
}

fn url(plural: &str, namespace: Option<&str>, batch: bool, rest: [Option<&str>; 2]) -> String {
    let mut url = String::from(PREFIX);
    if let Some(ns) = namespace {
        url.push_str("/namespaces/");
        encode_segment(ns, &mut url);
    }
    url.push('/');
    url.push_str(plural);
    if batch {
        url.push_str(BATCH_CREATE);
    }
    for segment in rest.into_iter().flatten() {
        url.push('/');
        encode_segment(segment, &mut url);
    }
    url
}

/// Percent-decodes one path segment (`+` stays itself, as in any path).
fn decode_segment(segment: &str) -> Result<String, PathError> {
    if !segment.contains('%') {
        return Ok(segment.to_string());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

/// Appends a segment, escaping what is not unreserved (RFC 3986) or `:`.
fn encode_segment(segment: &str, out: &mut String) {
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;
