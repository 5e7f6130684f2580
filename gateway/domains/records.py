"""What a sending domain publishes, and the BIND zone text of it.

For a domain D with return-path prefix P (default "bounces"):

    _gateway.D            TXT  gateway-verification=<token>          required: proves control of D
    D                     TXT  v=spf1 <ours> ~all (merged with D's)  required
    <selector>._domainkey.D TXT v=DKIM1; k=rsa; p=...                 required for active keys
    _dmarc.D              TXT  v=DMARC1; p=none; rua=...             required (an existing one is kept)
    D                     MX   10 <mx_hostname>.                     optional unless require_mx: replies
    P.D                   MX   10 <mx_hostname>.                     required: VERP bounces come back here
    P.D                   TXT  v=spf1 <ours> -all                    required: the envelope sender's SPF
    default._bimi.D       TXT  v=BIMI1; l=<url>                      optional, when bimi_logo_url is set

The return-path domain is a subdomain of D, so SPF on it aligns with the From domain under
DMARC's relaxed alignment (RFC 7489 3.1.2), and its own MX catches bounces without touching where
D's ordinary mail goes. The SPF on D itself ends in ~all, not -all, because it is merged into
policies that also cover the tenant's other senders; the return-path domain is ours alone: -all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from . import spf

TTL = 3600
VERIFY_LABEL = "_gateway"
VERIFY_PREFIX = "gateway-verification="


@dataclass(frozen=True)
class Settings:
    """The parts of the configuration that decide the records (read once per config load)."""

    mx_hostname: str
    sending_ips: tuple[str, ...]
    spf_include: str
    return_path_prefix: str
    require_mx: bool
    dmarc_rua: str
    bimi_logo_url: str
    helo: str

    @classmethod
    def from_config(cls, config: Config) -> "Settings":
        d = config.domains
        host = (d.mx_hostname or config.daemon.hostname).rstrip(".").lower()
        return cls(host, tuple(d.sending_ips), d.spf_include.rstrip(".").lower(), d.return_path_prefix,
                   d.require_mx, d.dmarc_rua, d.bimi_logo_url, config.daemon.hostname)

    def spf_terms(self) -> list[str]:
        """What we add to an SPF record: our include, else our addresses, else our host's A."""
        if self.spf_include:
            return [f"include:{self.spf_include}"]
        if self.sending_ips:
            return [("ip6:" if ":" in ip else "ip4:") + ip for ip in self.sending_ips]
        return [f"a:{self.mx_hostname}"]

    def return_path(self, domain: str) -> str:
        return f"{self.return_path_prefix}.{domain}"


@dataclass
class Record:
    purpose: str          # verification | spf | dkim | dmarc | mx | return_path_mx | return_path_spf | bimi
    type: str
    name: str             # fully qualified, no trailing dot
    value: str
    required: bool
    note: str = ""
    selector: str | None = None
    expected: dict[str, Any] = field(default_factory=dict)  # what verify compares against

    def as_dict(self) -> dict[str, Any]:
        out = {"purpose": self.purpose, "type": self.type, "name": self.name, "value": self.value,
               "required": self.required, "note": self.note, "ttl": TTL}
        if self.type == "TXT":
            out["strings"] = split_txt(self.value)
        if self.selector:
            out["selector"] = self.selector
        return out


def split_txt(value: str) -> list[str]:
    """A TXT value as DNS character-strings: at most 255 bytes each (RFC 1035 3.3.14)."""
    raw = value.encode("utf-8")
    return [raw[i : i + 255].decode("utf-8", "replace") for i in range(0, len(raw), 255)] or [""]


def dkim_value(algorithm: str, public_key: str) -> str:
    return f"v=DKIM1; k={algorithm}; p={public_key}"


def required_selectors(keys: list[dict[str, Any]]) -> set[str]:
    """Keys whose record the domain's state depends on: the active ones; before any is active
    (a new domain), the pending ones. A rotation's pending key only waits for its record."""
    active = {k["selector"] for k in keys if k["state"] == "active"}
    return active or {k["selector"] for k in keys if k["state"] == "pending"}


def plan(domain: dict[str, Any], settings: Settings, *, existing_spf: str | None = None,
         existing_dmarc: str | None = None) -> list[Record]:
    """Every record the domain should publish, in the order an operator would add them."""
    name = domain["name"]
    ours = settings.spf_terms()
    records = [Record("verification", "TXT", f"{VERIFY_LABEL}.{name}", VERIFY_PREFIX + domain["verification_token"], True,
                      "proves you control the domain")]
    if existing_spf:
        merged = spf.merge(existing_spf, ours)
        note = ("your SPF record already authorises the gateway" if merged == existing_spf
                else f"replaces your current record ({existing_spf}); a domain must publish exactly one SPF record")
        records.append(Record("spf", "TXT", name, merged, True, note))
    else:
        records.append(Record("spf", "TXT", name, f"v=spf1 {' '.join(ours)} ~all", True,
                              "authorises the gateway; add your other senders before ~all"))
    needed = required_selectors(domain.get("keys", []))
    for key in domain.get("keys", []):
        note = {"active": "signs outgoing mail",
                "pending": "new key: publish it; it signs once `domain verify` sees it",
                "retired": "retired key: keep it until mail it signed is delivered (a few days), then remove "
                           f"it with `gateway domain remove-selector {name} {key['selector']}`"}[key["state"]]
        if key["state"] == "pending" and key["selector"] in needed:
            note = "signs outgoing mail once verified"
        records.append(Record("dkim", "TXT", f"{key['selector']}._domainkey.{name}", dkim_value(key["algorithm"], key["public_key"]),
                              key["selector"] in needed, note, key["selector"],
                              {"algorithm": key["algorithm"], "public_key": key["public_key"], "state": key["state"]}))
    if existing_dmarc:
        records.append(Record("dmarc", "TXT", f"_dmarc.{name}", existing_dmarc, True, "already published; keep it"))
    else:
        rua = settings.dmarc_rua.replace("{domain}", name)
        value = "v=DMARC1; p=none" + (f"; rua={rua}" if rua else "")
        note = ("p=none only collects reports: once the reports show all your mail passing SPF or DKIM, move to "
                "p=quarantine (optionally with pct=25 and raising it), then p=reject")
        rua_host = rua.rpartition("@")[2]
        if rua and rua_host and not (rua_host == name or rua_host.endswith("." + name)):
            note += f"; {rua_host} must publish {name}._report._dmarc.{rua_host} TXT \"v=DMARC1\" to accept the reports"
        records.append(Record("dmarc", "TXT", f"_dmarc.{name}", value, True, note))
    records.append(Record("mx", "MX", name, f"10 {settings.mx_hostname}.", settings.require_mx,
                          "replies to the domain reach the gateway" +
                          ("" if settings.require_mx else "; optional: only if the gateway should receive the domain's mail")))
    rp = settings.return_path(name)
    records.append(Record("return_path_mx", "MX", rp, f"10 {settings.mx_hostname}.", True,
                          f"bounces (VERP, {settings.return_path_prefix}+...@{rp}) come back to the gateway"))
    records.append(Record("return_path_spf", "TXT", rp, f"v=spf1 {' '.join(ours)} -all", True,
                          "SPF of the envelope sender; aligned with the From domain under relaxed DMARC alignment"))
    if settings.bimi_logo_url:
        records.append(Record("bimi", "TXT", f"default._bimi.{name}", f"v=BIMI1; l={settings.bimi_logo_url.replace('{domain}', name)};",
                              False, "optional brand logo; receivers show it only with DMARC at p=quarantine or p=reject"))
    return records


def quote_txt(value: str) -> str:
    return " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in split_txt(value))


def zone(domain: str, records: list[Record]) -> str:
    """BIND zone-file lines, fully qualified, that paste into any zone as they are.

    An optional MX stays commented out: pasted live, the domain's own MX would send all of its
    inbound mail to the gateway, which does not receive it (there is no inbound yet; the record is
    live only with domains.require_mx)."""
    lines = [f"; DNS records for {domain}, from the mail gateway. Lines marked 'optional' are not needed to verify."]
    for r in records:
        value = quote_txt(r.value) if r.type == "TXT" else r.value
        lines.append(f"; {r.purpose}{'' if r.required else ' (optional)'}: {r.note}" if r.note else f"; {r.purpose}")
        line = f"{r.name}. {TTL} IN {r.type} {value}"
        if r.type == "MX" and not r.required:
            lines.append(f"; commented out: live, it moves all inbound mail for {r.name} to the gateway; "
                         "uncomment only if the gateway should receive it (then set domains.require_mx = true)")
            line = "; " + line
        lines.append(line)
    return "\n".join(lines) + "\n"
