# `make images` = `docker buildx bake -f images/docker-bake.hcl` (all targets of images/Dockerfile).
#   REGISTRY=ghcr.io/plana TAG=0.1.0 docker buildx bake -f images/docker-bake.hcl --push
# Plain jobs are tagged {REGISTRY}/plana-job-{cmd}:{TAG}; the Odoo-running ones once per major
# version: {REGISTRY}/plana-job-{cmd}:{TAG}-odoo{17,18,19}.

variable "REGISTRY" {
  default = "ghcr.io/plana"
}

variable "TAG" {
  default = "dev"
}

variable "PG_MAJOR" {
  default = "15"
}

# OpenUpgrade from PyPI, per Odoo major: [odoo-addon-openupgrade-framework, -scripts].
variable "OPENUPGRADE" {
  default = {
    "17" = ["17.0.1.0.0.10", "17.0.1.0.1.493"]
    "18" = ["18.0.1.0.3.2", "18.0.1.0.0.554"]
    "19" = ["19.0.1.0.0.6", "19.0.1.0.0.407"]
  }
}

group "default" {
  targets = ["plain", "odoo"]
}

target "_common" {
  context    = "."
  dockerfile = "images/Dockerfile"
  args = {
    PG_MAJOR = PG_MAJOR
  }
  labels = {
    "org.opencontainers.image.source" = "https://github.com/plana/plana-jobs"
  }
}

target "plain" {
  inherits = ["_common"]
  name     = cmd
  matrix = {
    cmd = [
      "emit-event", "matrix-room", "account-webhook", "erp-callback", "tenant-db",
      "backup", "restore", "backup-verify", "filestore-copy", "deprovision", "inspect",
    ]
  }
  target = cmd
  tags   = ["${REGISTRY}/plana-job-${cmd}:${TAG}"]
}

target "odoo" {
  inherits = ["_common"]
  name     = "${cmd}-odoo${v}"
  matrix = {
    cmd = ["template-build", "upgrade", "environment-db"]
    v   = ["17", "18", "19"]
  }
  target = cmd
  args = {
    PG_MAJOR     = PG_MAJOR
    ODOO_VERSION = v
    # The odoo package creates user `odoo` without a fixed UID: 101 in the 17 image, 100 in
    # 18 and 19 (the Dockerfile checks it at build time, so a change fails the build).
    ODOO_UID = v == "17" ? "101" : "100"
    # OpenUpgrade's PyPI wheels of that major, pinned (framework, scripts).
    OPENUPGRADE_FRAMEWORK_VERSION = OPENUPGRADE[v][0]
    OPENUPGRADE_SCRIPTS_VERSION   = OPENUPGRADE[v][1]
  }
  tags = ["${REGISTRY}/plana-job-${cmd}:${TAG}-odoo${v}"]
}
