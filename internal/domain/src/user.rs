//! Who a user is: a normalised email, a password that meets the policy, and a role.

use std::fmt;

use crate::Invalid;
use crate::names::named;

pub const EMAIL_MAX_CHARS: usize = 254;

/// A syntactically valid email address, stored lower-case so `Ann@x.io` and `ann@x.io`
/// are one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let text = raw.trim().to_lowercase();
        if text.chars().count() > EMAIL_MAX_CHARS {
            return Err(Invalid::new("email", format!("must be at most {EMAIL_MAX_CHARS} characters")));
        }
        if !email_address::EmailAddress::is_valid(&text) || !text.contains('.') {
            return Err(Invalid::new("email", "must be a valid email address"));
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What other users see of someone (the live page's leader line): the part of the email
/// before the `@`, at most 24 characters. The address itself stays private.
pub fn display_name(email: &str) -> String {
    let local = email.split('@').next().unwrap_or_default();
    local.chars().take(24).collect()
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new password: 8 to 128 characters. Never logged, never shown by `Debug`.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let chars = raw.chars().count();
        if chars < Self::MIN_CHARS {
            return Err(Invalid::new("password", format!("must be at least {} characters", Self::MIN_CHARS)));
        }
        if chars > Self::MAX_CHARS {
            return Err(Invalid::new("password", format!("must be at most {} characters", Self::MAX_CHARS)));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    User,
    Admin,
}

named!(Role, "role", "role", { User => "user", Admin => "admin" });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_display_name_is_the_email_before_the_at_sign_and_short() {
        assert_eq!(display_name("ann.lee@example.com"), "ann.lee");
        assert_eq!(display_name(&format!("{}@example.com", "x".repeat(40))), "x".repeat(24));
    }

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(Email::parse(" Ann@Example.COM ").unwrap().as_str(), "ann@example.com");
    }

    #[test]
    fn malformed_emails_name_the_field() {
        for bad in ["", "ann", "ann@", "@x.io", "ann@@x.io", "ann@localhost", "a b@x.io"] {
            let err = Email::parse(bad).unwrap_err();
            assert_eq!(err.field, "email", "{bad}");
        }
    }

    #[test]
    fn a_seven_character_password_is_too_short() {
        assert_eq!(Password::parse("1234567").unwrap_err().message, "must be at least 8 characters");
        assert!(Password::parse("12345678").is_ok());
    }

    #[test]
    fn password_debug_is_redacted() {
        let password = Password::parse("correct horse").unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }

    #[test]
    fn roles_round_trip() {
        assert_eq!("admin".parse::<Role>().unwrap(), Role::Admin);
        assert_eq!(Role::User.as_str(), "user");
        assert!("root".parse::<Role>().is_err());
    }
}
