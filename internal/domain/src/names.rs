//! Enums that travel as their names (JSON, Postgres columns, Redis values, Lua replies).

/// Gives a field-less enum its names: `as_str`, `Display`, and a `FromStr` whose error is an
/// [`crate::Invalid`] naming `$field`.
///
/// ```ignore
/// named!(OrderKind, "kind", "order kind", { Standard => "standard", Sale => "sale" });
/// ```
macro_rules! named {
    ($ty:ident, $field:literal, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every name, in declaration order (the API spec lists them as an enum).
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::Invalid;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err($crate::Invalid::new(
                        $field,
                        format!(concat!("must be a known ", $what, " ({}), not `{}`"), Self::NAMES.join(", "), s),
                    )),
                }
            }
        }
    };
}

pub(crate) use named;
