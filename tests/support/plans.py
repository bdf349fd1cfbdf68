"""Building a job's parameters and a set's manifest for the unit tests of `decide` (no service)."""

from __future__ import annotations

from typing import Any, TypeVar

from jobs.core import naming, params
from jobs.ops import manifest as mf

P = TypeVar("P", bound=params.Common)


def params_of(cls: type[P], **values: Any) -> P:
    """`cls` with every option at its default, then `values`: what click would hand the job."""
    base = {name: opt.default for name, opt in params.options(cls)}
    base.update(values)
    return params.build(cls, base)


def manifest(
    set_name: str, subdomain: str, base_domain: str = naming.DEFAULT_BASE_DOMAIN
) -> mf.Manifest:
    """The parsed manifest of a set of `subdomain`, as a backup writes one (a custom dump)."""
    sha = "0" * 64
    return mf.Manifest(
        set=set_name,
        subdomain=subdomain,
        database=naming.db_name(subdomain, base_domain),
        base_domain=base_domain,
        final=False,
        dump=mf.Dump("custom", mf.DUMP_FILE),
        filestore=mf.Filestore(mf.FILESTORE_TAR, 1, 10, True),
        files={mf.DUMP_FILE: mf.FileEntry(1, sha), mf.FILESTORE_TAR: mf.FileEntry(1, sha)},
        base_version="18.0.1.3",
        settings=mf.DbSettings("UTF8", "C", "C"),
        marker=mf.MarkerInfo("tenant", {"subdomain": subdomain, "project_id": 7}),
        tables={"public.res_partner": mf.Table(50)},
    )
