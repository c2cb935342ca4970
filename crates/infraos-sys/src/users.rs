//! Resolving a workload's `user` (a name or `uid[:gid]`) to ids, before anything starts, so a
//! bad user is an error on the agent's side and never a half-started process.

use nix::unistd::{Gid, Group, Uid, User};

use crate::SysError;

/// The ids a process drops to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Looks up a user by name, or takes numeric ids as given (the primary group defaults to the
/// uid's, or to the uid itself when the uid has no passwd entry).
pub fn resolve(
    name: Option<&str>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<Credentials, SysError> {
    let unknown = |what: String| SysError::Unsupported(what);
    let user = match (name, uid) {
        (Some(name), _) => Some(
            User::from_name(name)
                .map_err(|e| SysError::call("getpwnam", e))?
                .ok_or_else(|| unknown(format!("user {name:?} does not exist on this node")))?,
        ),
        (None, Some(uid)) => {
            User::from_uid(Uid::from_raw(uid)).map_err(|e| SysError::call("getpwuid", e))?
        }
        (None, None) => return Err(unknown("no user given".into())),
    };
    let uid = user.as_ref().map_or(uid.unwrap_or(0), |u| u.uid.as_raw());
    let gid = gid.unwrap_or_else(|| user.as_ref().map_or(uid, |u| u.gid.as_raw()));
    if Group::from_gid(Gid::from_raw(gid)).is_err() {
        return Err(unknown(format!("group {gid} cannot be looked up")));
    }
    Ok(Credentials {
        uid,
        gid,
        groups: vec![gid],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_resolve() {
        let root = resolve(Some("root"), None, None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let nobody = resolve(Some("nobody"), None, None).unwrap();
        assert_ne!(nobody.uid, 0);
        let numeric = resolve(None, Some(4242), Some(4242)).unwrap();
        assert_eq!((numeric.uid, numeric.gid), (4242, 4242));
        let err = resolve(Some("no-such-user-infraos"), None, None).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
