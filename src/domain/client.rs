use std::net::IpAddr;

/// Whose requests count together in every per-address limit (the rate limits of the sale
/// routes, of logins and sign-ups, the open live streams, the open connections): an IPv4
/// address alone (an IPv4-mapped IPv6 address as that IPv4 address); an IPv6 address by its
/// /64. One subscriber usually holds a whole /64, so counting single IPv6 addresses would let
/// one client rotate through billions of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        ClientKey(match ip {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
        })
    }
}

/// `203.0.113.7`, or `2001:db8:1:2::/64` (the form the rate-limit keys in Redis carry).
impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                write!(f, "{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let key = |s: &str| ClientKey::of(s.parse().unwrap());
        assert_eq!(key("203.0.113.7").to_string(), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), key("203.0.113.7"));
        assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_ne!(key("203.0.113.8"), key("203.0.113.7"));
    }
}
