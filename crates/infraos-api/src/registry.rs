//! The one registry of kinds: a table, `Variant => SpecType`, from which everything that
//! lists kinds is generated.
//!
//! ```text
//!  kinds.rs: registry! { Claim => ClaimSpec, … }
//!     ├─ type aliases            kinds::Claim = Object<ClaimSpec>
//!     ├─ kinds()                 the object list: discovery, OpenAPI, RBAC's kind names
//!     ├─ kind_by_plural/any_name URLs (crate::path) and the CLI's names and short names
//!     ├─ TypedObject             one enum over every kind: decode, parse, check, meta
//!     └─ object_schema()         each kind's JSON Schema, for OpenAPI
//! ```
//! Adding a kind is a module in `kinds/` with its spec and [`crate::envelope::KindInfo`], and
//! one row in the table; the server adds a strategy file only if the kind needs logic of its
//! own. Expanded in `kinds.rs`, so this module imports no kind (and no kind imports it back).

/// Generates the registry from `Variant => SpecType` rows, in the order kinds are listed.
macro_rules! registry {
    ($($variant:ident => $spec:ident),+ $(,)?) => {
        $(
            #[doc = concat!("A ", stringify!($variant), " object.")]
            pub type $variant = $crate::envelope::Object<$spec>;
        )+

        /// Every kind the API serves from the store, in a stable order.
        pub fn kinds() -> &'static [&'static $crate::envelope::KindInfo] {
            use $crate::envelope::Kind as _;
            static KINDS: &[&$crate::envelope::KindInfo] = &[$($spec::INFO),+];
            KINDS
        }

        /// Looks a kind up by plural (URL form).
        pub fn kind_by_plural(plural: &str) -> Option<&'static $crate::envelope::KindInfo> {
            kinds().iter().copied().find(|k| k.plural == plural)
        }

        /// Looks a kind up the way the CLI accepts it: kind, plural, singular or short name,
        /// any case.
        pub fn kind_by_any_name(name: &str) -> Option<&'static $crate::envelope::KindInfo> {
            let lower = name.to_ascii_lowercase();
            kinds().iter().copied().find(|k| {
                k.kind.eq_ignore_ascii_case(&lower)
                    || k.plural == lower
                    || k.singular == lower
                    || k.short_names.contains(&lower.as_str())
            })
        }

        /// An object of any kind, decoded and validated: what the server works with between
        /// parsing a request and storing the object.
        #[derive(Clone, Debug)]
        pub enum TypedObject {
            $($variant($crate::envelope::Object<$spec>),)+
        }

        impl TypedObject {
            /// Decodes and validates a JSON object of the given kind.
            pub fn decode(
                info: &$crate::envelope::KindInfo,
                value: &serde_json::Value,
            ) -> Result<Self, $crate::validation::ValidationErrors> {
                use $crate::envelope::Kind as _;
                $(
                    if info.kind == $spec::INFO.kind {
                        return Ok(TypedObject::$variant($crate::envelope::decode::<$spec>(value)?));
                    }
                )+
                Err($crate::validation::ValidationErrors::one(
                    "kind",
                    format!("unknown kind {:?}", info.kind),
                ))
            }

            /// Parses JSON (or YAML) bytes against the kind's schema, without the checks of
            /// [`TypedObject::check`], so the caller can fill in what the URL implies first.
            pub fn parse_slice(
                info: &$crate::envelope::KindInfo,
                bytes: &[u8],
                yaml: bool,
            ) -> Result<Self, $crate::validation::ValidationErrors> {
                use $crate::envelope::Kind as _;
                $(
                    if info.kind == $spec::INFO.kind {
                        return Ok(TypedObject::$variant(
                            $crate::envelope::parse_slice::<$spec>(bytes, yaml)?,
                        ));
                    }
                )+
                Err($crate::validation::ValidationErrors::one(
                    "kind",
                    format!("unknown kind {:?}", info.kind),
                ))
            }

            /// The kind's static facts.
            pub fn info(&self) -> &'static $crate::envelope::KindInfo {
                use $crate::envelope::Kind as _;
                match self {
                    $(TypedObject::$variant(_) => $spec::INFO,)+
                }
            }

            /// The checks beyond the schema (see [`crate::envelope::check`]).
            pub fn check(&self) -> Result<(), $crate::validation::ValidationErrors> {
                match self {
                    $(TypedObject::$variant(o) => $crate::envelope::check(o),)+
                }
            }

            /// The serialized object, as the store keeps it.
            pub fn to_vec(&self) -> Vec<u8> {
                match self {
                    $(TypedObject::$variant(o) => serde_json::to_vec(o).unwrap_or_default(),)+
                }
            }

            pub fn clear_status(&mut self) {
                match self {
                    $(TypedObject::$variant(o) => o.status = None,)+
                }
            }

            pub fn meta(&self) -> &$crate::meta::ObjectMeta {
                match self {
                    $(TypedObject::$variant(o) => &o.metadata,)+
                }
            }

            pub fn meta_mut(&mut self) -> &mut $crate::meta::ObjectMeta {
                match self {
                    $(TypedObject::$variant(o) => &mut o.metadata,)+
                }
            }

            /// The normalized JSON form: quantities, selectors and defaults as the server
            /// stores them.
            pub fn to_value(&self) -> serde_json::Value {
                match self {
                    $(TypedObject::$variant(o) => o.to_value(),)+
                }
            }

            pub fn has_status(&self) -> bool {
                match self {
                    $(TypedObject::$variant(o) => o.status.is_some(),)+
                }
            }
        }

        /// Validates a JSON object against its kind's schema and rules.
        pub fn validate_value(
            info: &$crate::envelope::KindInfo,
            value: &serde_json::Value,
        ) -> Result<(), $crate::validation::ValidationErrors> {
            TypedObject::decode(info, value).map(drop)
        }

        /// The JSON Schema of a kind's full object, for the OpenAPI document (any object,
        /// for a kind the registry does not hold).
        pub fn object_schema(
            info: &$crate::envelope::KindInfo,
            generator: &mut schemars::SchemaGenerator,
        ) -> schemars::Schema {
            use $crate::envelope::Kind as _;
            $(
                if info.kind == $spec::INFO.kind {
                    return $crate::envelope::object_schema::<$spec>(generator);
                }
            )+
            schemars::json_schema!({"type": "object"})
        }
    };
}

pub(crate) use registry;
