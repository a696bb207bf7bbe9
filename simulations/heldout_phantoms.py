"""Held-out synthetic pediatric joint MRI datasets (nnU-Net v2 raw format), independent of `pedseg data synth`.

A second phantom generator, written without looking at pedseg's own (`pedseg data synth`), whose output serves as
held-out data for the reproduction. It is deliberately harder and different in construction:

- bones are implicit surfaces (approximate signed distance functions, mm) built from ellipsoids, capsules and bent
  tubes, evaluated in an "anatomical" frame (x: lateral, y: anterior, z: superior) that is scaled, warped and
  rigidly placed in world space;
- volumes have thick anisotropic slices whose slice axis differs per joint, oblique affines (small scanner tilts),
  a per-joint MRI protocol, slice-profile partial-volume averaging, textured marrow, bias field and Rician noise,
  and are stored as int16 or uint16;
- unlabelled distractor bones (fibula, navicular, clavicle) are rendered like bone but labelled background.

Every case is drawn from its own generator seeded with (seed, joint index, case index), so a smaller run gives the
first cases of a larger one.

Usage: python -m simulations.heldout_phantoms OUT [--train 24] [--test 8] [--seed 7] [--no-distractors]
Writes OUT/{ankle,knee,shoulder}/ with dataset.json, imagesTr, labelsTr, imagesTs and labelsTs.
"""

import argparse
import os
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from pedseg_core.data.nnunet import FILE_ENDING, image_file, label_file, mri_dataset_json, write_dataset_json

F32 = np.float32


# ----------------------------------------------------------------- implicit primitives (mm)
def rot(ax=0.0, ay=0.0, az=0.0):
    """Rotation matrix Rz @ Ry @ Rx for angles in degrees."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def ellipsoid(P, c, r, R=None):
    """Approximate SDF of an ellipsoid with centre c, radii r and optional orientation R."""
    x, y, z = P[0] - c[0], P[1] - c[1], P[2] - c[2]
    if R is not None:  # local coordinates = R^T (p - c)
        x, y, z = (
            R[0, 0] * x + R[1, 0] * y + R[2, 0] * z,
            R[0, 1] * x + R[1, 1] * y + R[2, 1] * z,
            R[0, 2] * x + R[1, 2] * y + R[2, 2] * z,
        )
    k0 = np.sqrt((x / r[0]) ** 2 + (y / r[1]) ** 2 + (z / r[2]) ** 2)
    k1 = np.sqrt((x / r[0] ** 2) ** 2 + (y / r[1] ** 2) ** 2 + (z / r[2] ** 2) ** 2)
    d = k0 * (k0 - 1) / np.maximum(k1, 1e-6)  # good approximation near the surface
    return np.where(k0 < 0.5, (k0 - 1) * min(r), d)


def capsule(P, a, b, r):
    """SDF of a (tapered, if r is a pair) capsule from a to b."""
    r0, r1 = (r, r) if np.isscalar(r) else r
    ba = np.subtract(b, a)
    px, py, pz = P[0] - a[0], P[1] - a[1], P[2] - a[2]
    h = np.clip((px * ba[0] + py * ba[1] + pz * ba[2]) / (ba @ ba), 0, 1)
    return np.sqrt((px - h * ba[0]) ** 2 + (py - h * ba[1]) ** 2 + (pz - h * ba[2]) ** 2) - (r0 + h * (r1 - r0))


def tube(P, ctrl, r0, r1, n=8):
    """Bent tube along a quadratic Bezier curve (union of tapered capsules)."""
    c = np.asarray(ctrl, float)
    t = np.linspace(0, 1, n + 1)[:, None]
    pts = (1 - t) ** 2 * c[0] + 2 * (1 - t) * t * c[1] + t**2 * c[2]
    rs = r0 + (r1 - r0) * t[:, 0]
    return np.min([capsule(P, pts[i], pts[i + 1], (rs[i], rs[i + 1])) for i in range(n)], axis=0)


def ecyl(P, c, rx, ry):
    """Approximate SDF of an infinite elliptic cylinder along z."""
    return (np.sqrt(((P[0] - c[0]) / rx) ** 2 + ((P[1] - c[1]) / ry) ** 2) - 1) * min(rx, ry)


def smin(a, b, k):
    """Polynomial smooth union of two SDFs (blend width k)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0, 1)
    return b + (a - b) * h - k * h * (1 - h)


def poly2d(u, v, verts):
    """Approximate SDF of a convex counter-clockwise polygon in the (u, v) plane."""
    d = None
    for (u0, v0), (u1, v1) in zip(verts, verts[1:] + verts[:1]):
        n = np.array([v1 - v0, -(u1 - u0)])
        n = n / np.linalg.norm(n)
        e = (u - u0) * n[0] + (v - v0) * n[1]
        d = e if d is None else np.maximum(d, e)
    return d


# ----------------------------------------------------------------- anatomy (adult-ish mm, scaled per case)
# Soft-tissue functions return (body SDF, [(tissue, SDF), ...]).
def knee_femur(P):
    d = smin(capsule(P, (0, -2, 30), (0, 3, 230), 12), ellipsoid(P, (0, -3, 30), (32, 22, 18)), 8)
    d = smin(d, ellipsoid(P, (0, 8, 24), (24, 14, 14)), 5)  # trochlea
    for sx in (-1, 1):
        d = smin(d, ellipsoid(P, (18 * sx, -8, 15), (13, 24, 15)), 5)  # condyles
    return d


def knee_tibia(P):
    d = smin(ellipsoid(P, (0, -4, -15), (36, 27, 10)), ellipsoid(P, (0, -6, -32), (26, 21, 20)), 8)
    d = smin(d, capsule(P, (0, -8, -35), (0, -10, -230), 13), 8)
    return smin(d, ellipsoid(P, (0, 17, -38), (8, 6, 12)), 4)  # tuberosity


def knee_patella(P):
    return ellipsoid(P, (0, 31, 22), (17, 6.5, 19), rot(10))


def knee_fibula(P):
    return smin(ellipsoid(P, (36, -20, -26), (8, 8, 10)), capsule(P, (36, -20, -30), (32, -17, -230), 6), 4)


def knee_soft(P):
    return ecyl(P, (0, -2), 56, 52), [
        ("fat", ellipsoid(P, (0, 18, -6), (18, 8, 8))),
        ("fat", ellipsoid(P, (0, -40, 5), (16, 10, 45))),
        ("fluid", ellipsoid(P, (0, 20, 44), (20, 3.5, 10))),
        ("vessel", capsule(P, (0, -36, -150), (2, -34, 150), 3.5)),
        ("tendon", tube(P, [(0, 31, 4), (0, 28, -18), (0, 21, -38)], 3, 2.5)),
        ("tendon", capsule(P, (0, 30, 42), (0, 22, 140), 4)),
    ]


def ankle_tibia(P):
    d = smin(capsule(P, (0, -2, 20), (0, -4, 230), 11), ellipsoid(P, (0, 0, 14), (22, 19, 13)), 8)
    return smin(d, ellipsoid(P, (-17, 0, -2), (6, 10, 13)), 4)  # medial malleolus


def ankle_talus(P):
    return smin(ellipsoid(P, (0, -2, -14), (15, 20, 11)), ellipsoid(P, (0, 18, -18), (11, 12, 9)), 5)


def ankle_calcaneus(P):
    d = smin(ellipsoid(P, (0, -12, -44), (17, 33, 14), rot(10)), ellipsoid(P, (0, -38, -48), (15, 13, 14)), 6)
    return smin(d, ellipsoid(P, (4, 20, -38), (12, 11, 8)), 5)  # anterior process


def ankle_fibula(P):
    return smin(capsule(P, (25, -14, -12), (30, -16, 230), 6), ellipsoid(P, (25, -14, -6), (6, 8, 9)), 3)


def ankle_navicular(P):
    return ellipsoid(P, (0, 38, -22), (14, 5, 10))


def ankle_soft(P):
    leg = np.maximum(ecyl(P, (0, -8), 32, 45), -(P[2] + 20))
    body = smin(smin(leg, ellipsoid(P, (0, 25, -40), (38, 85, 22)), 12), ellipsoid(P, (0, -40, -44), (32, 26, 24)), 12)
    return body, [
        ("fat", ellipsoid(P, (0, -32, -8), (10, 9, 20))),
        ("fluid", ellipsoid(P, (0, 16, -4), (12, 4, 5))),
        ("tendon", tube(P, [(0, -54, -44), (0, -47, 0), (0, -38, 90)], 4, 5)),
        ("tendon", tube(P, [(-20, -16, 80), (-21, -14, -6), (-14, 12, -38)], 2.5, 2.5)),
        ("tendon", tube(P, [(2, 24, 80), (4, 30, -8), (6, 45, -32)], 2.5, 2.5)),
    ]


def shoulder_humerus(P):
    d = smin(ellipsoid(P, (0, 0, 0), (22, 22, 22)), ellipsoid(P, (8, 0, -15), (19, 18, 16)), 6)
    d = smin(d, capsule(P, (10, 0, -15), (14, 0, -230), 11), 8)
    return smin(d, ellipsoid(P, (16, 6, -2), (9, 11, 11)), 4)  # greater tuberosity


def shoulder_scapula(P):
    x, y, z = P
    g = -8 + 0.45 * (x + 40) + 0.003 * (x + 40) ** 2  # curved blade mid-surface
    sheet = np.abs(y - g) / np.sqrt(1 + (0.45 + 0.006 * (x + 40)) ** 2) - 2.5
    blade = np.maximum(sheet, poly2d(x, z, [(-36, -12), (-36, 20), (-130, 22), (-130, -60), (-100, -110)]))
    glen = np.maximum(ellipsoid(P, (-33, 0, 0), (8, 14, 19)), 26 - np.sqrt(x * x + y * y + z * z))  # glenoid cup
    d = smin(smin(blade, glen, 4), capsule(P, (-36, -2, -2), (-48, -12, -4), 9), 5)
    d = smin(d, tube(P, [(-120, -27, 8), (-55, -18, 16), (-8, -22, 34)], 4, 5), 4)  # spine
    d = smin(d, ellipsoid(P, (6, -10, 32), (16, 13, 4.5), rot(0, -10)), 4)  # acromion
    return smin(d, tube(P, [(-36, 2, 14), (-30, 22, 26), (-12, 32, 20)], 5.5, 4), 4)  # coracoid


def shoulder_clavicle(P):
    return tube(P, [(-6, 12, 44), (-60, 22, 48), (-140, 12, 42)], 6.5, 7)


def shoulder_soft(P):
    body = smin(
        smin(ellipsoid(P, (-125, 0, -40), (100, 80, 170)), capsule(P, (12, 0, 10), (20, 0, -230), 42), 15),
        ellipsoid(P, (0, -2, 8), (50, 50, 46)),
        15,
    )
    return body, [
        ("lung", ellipsoid(P, (-145, 28, -80), (60, 42, 110))),
        ("fluid", ellipsoid(P, (10, -4, 26), (16, 10, 2.2))),
        ("fluid", ellipsoid(P, (-18, 0, -24), (5, 8, 5))),
        ("tendon", tube(P, [(-60, -16, 30), (-6, -6, 27), (22, 4, 12)], 3.5, 3)),
        ("tendon", tube(P, [(8, 18, -90), (12, 16, -10), (-10, 4, 22)], 2.5, 2.5)),
    ]


# protocols: relative tissue signal, texture amplitudes (marrow, soft tissue), noise range.
# Float entries are jittered per case (key order matters: it fixes the order of the random draws).
PD_FS = dict(air=0, fat=0.22, muscle=0.38, marrow=0.6, cortex=0.06, cart=0.85, physis=0.95, fluid=1.0,
             tendon=0.05, vessel=0.1, lung=0.02, tex_m=0.15, tex_s=0.07, noise=(0.02, 0.045))  # fmt: skip
T1 = dict(air=0, fat=0.95, muscle=0.33, marrow=0.8, cortex=0.05, cart=0.58, physis=0.5, fluid=0.22,
          tendon=0.04, vessel=0.3, lung=0.02, tex_m=0.12, tex_s=0.05, noise=(0.015, 0.035))  # fmt: skip
PD = dict(air=0, fat=0.85, muscle=0.42, marrow=0.72, cortex=0.06, cart=0.9, physis=0.85, fluid=0.9,
          tendon=0.05, vessel=0.6, lung=0.02, tex_m=0.14, tex_s=0.06, noise=(0.02, 0.05))  # fmt: skip

# bones: (name, label, SDF); label 0 = unlabelled distractor. physes: growth-plate mid-surface per bone (anatomical
# frame). dirs: world directions of the canonical array axes (in-plane a, in-plane b, slice s); slice_axis: where
# the slice axis goes in the stored array. The joint index in sorted(JOINTS) is part of each case's seed.
JOINTS = {
    "ankle": dict(
        bones=[
            ("tibia", 1, ankle_tibia),
            ("talus", 2, ankle_talus),
            ("calcaneus", 3, ankle_calcaneus),
            ("fibula", 0, ankle_fibula),
            ("navicular", 0, ankle_navicular),
        ],
        physes={"tibia": lambda P: P[2] - 22 - 0.003 * P[0] ** 2},
        soft=ankle_soft,
        proto=T1,
        center=(0, -5, -15),
        fov=(85, 130),
        slice_axis=2,
        dtype=np.uint16,
        dirs=((0, 0, -1), (0, 1, 0), (1, 0, 0)),
    ),
    "knee": dict(
        bones=[
            ("femur", 1, knee_femur),
            ("tibia", 2, knee_tibia),
            ("patella", 3, knee_patella),
            ("fibula", 0, knee_fibula),
        ],
        physes={
            "femur": lambda P: P[2] - 24 - 0.004 * P[0] ** 2,
            "tibia": lambda P: P[2] + 21 + 0.004 * P[0] ** 2,
        },
        soft=knee_soft,
        proto=PD_FS,
        center=(0, 0, 5),
        fov=(85, 135),
        slice_axis=0,
        dtype=np.int16,
        dirs=((0, -1, 0), (0, 0, 1), (-1, 0, 0)),
    ),
    "shoulder": dict(
        bones=[
            ("humerus", 1, shoulder_humerus),
            ("scapula", 2, shoulder_scapula),
            ("clavicle", 0, shoulder_clavicle),
        ],
        physes={"humerus": lambda P: P[2] + 6 - 0.3 * P[0] + 0.005 * P[1] ** 2},
        soft=shoulder_soft,
        proto=PD,
        center=(-12, 0, -5),
        fov=(95, 140),
        slice_axis=1,
        dtype=np.int16,
        dirs=((1, 0, 0), (0, 0, 1), (0, 1, 0)),
    ),
}


# ----------------------------------------------------------------- one case
@dataclass
class Pose:
    """World -> anatomical mapping of one case (placement, anisotropic scale, smooth warp) and its bones."""

    c_anat: np.ndarray
    R_anat: np.ndarray
    aniso: np.ndarray
    warp_k: np.ndarray
    warp_phase: np.ndarray
    warp_amp: np.ndarray
    bones: list
    jitter: list  # per bone: (shift in mm, size factor)
    scale: float

    def to_anat(self, world):
        """World points (N, 3) -> anatomical coordinates as a tuple of three float32 arrays."""
        p = ((world - self.c_anat) @ self.R_anat) / self.aniso
        p = p + np.sin(p @ self.warp_k.T + self.warp_phase) @ self.warp_amp
        return tuple(p.T.astype(F32))

    def bone_sdf(self, P):
        """SDF of every bone at anatomical points P, shape (n_bones, N), roughly in world mm."""
        out = []
        for (_, _, fn), (shift, size) in zip(self.bones, self.jitter):
            Pb = tuple((P[i] - shift[i]) / size for i in range(3))
            out.append(fn(Pb) * size * self.scale)
        return np.array(out)


def make_case(joint, rng, distractors=True):
    """Draw one case: (image array, label array, affine, info dict), arrays in the joint's stored layout."""
    spec = JOINTS[joint]
    bones = [b for b in spec["bones"] if distractors or b[1] > 0]
    # Draw a placement and acquisition geometry until the bones fit the slab (at most 36 slices of <= 4 mm).
    for attempt in range(30):
        scale = rng.uniform(0.7, 1.2) if attempt < 15 else rng.uniform(0.7, 0.85)
        aniso = scale * rng.uniform(0.92, 1.08, 3)
        R_anat, R_scan = rot(*rng.uniform(-8, 8, 3)), rot(*rng.uniform(-3, 3, 3))
        D = np.array([R_scan @ np.array(d, float) for d in spec["dirs"]])  # rows: a, b, s
        c_fov = rng.uniform(-40, 40, 3)
        c_anat = c_fov - R_anat @ (np.array(spec["center"]) * aniso) + rng.normal(0, 4, 3)
        warp_k = rng.normal(size=(4, 3))
        warp_k *= (2 * np.pi / rng.uniform(40, 100, 4) / np.linalg.norm(warp_k, axis=1))[:, None]
        warp_amp, warp_phase = rng.normal(size=(4, 3)) * rng.uniform(0.8, 2.0), rng.uniform(0, 2 * np.pi, 4)
        jitter = [(rng.normal(0, 1.0, 3), rng.uniform(0.93, 1.07)) for _ in bones]  # per-bone shift (mm), size
        septa_k = rng.normal(size=(5, 3))
        septa_k *= (2 * np.pi / rng.uniform(25, 60, 5) / np.linalg.norm(septa_k, axis=1))[:, None]
        septa_p = rng.uniform(0, 2 * np.pi, 5)
        n_a, n_b = rng.integers(180, 261, 2)
        while n_a % 32 == 0 or n_b % 32 == 0 or n_a == n_b:
            n_a, n_b = rng.integers(180, 261, 2)
        sp = float(np.clip(rng.uniform(*spec["fov"]) * scale / max(n_a, n_b), 0.35, 0.6))
        thk, m1, m2 = rng.uniform(2.5, 4.0), rng.integers(2, 5), rng.integers(2, 5)
        pose = Pose(c_anat, R_anat, aniso, warp_k, warp_phase, warp_amp, bones, jitter, scale)

        # coarse pre-pass: bone extent along the slice direction inside the in-plane field of view
        u = np.arange(-n_a * sp / 2, n_a * sp / 2, 2.5)
        v = np.arange(-n_b * sp / 2, n_b * sp / 2, 2.5)
        s = np.arange(-130, 130, 2.0)
        G = np.stack(np.meshgrid(u, v, s, indexing="ij"), -1).reshape(-1, 3)
        inb = pose.bone_sdf(pose.to_anat(c_fov + G @ D)).min(0) < 0
        if not inb.any():
            continue
        s_lo, s_hi = G[inb, 2].min() - 2, G[inb, 2].max() + 2
        if s_lo < -125 or s_hi > 125:
            continue
        ext = s_hi - s_lo
        if np.ceil(ext / thk) + m1 + m2 > 36:
            m1 = m2 = 2
            thk = ext / 32
        if thk > 4.0:
            continue
        n_s = int(np.ceil(ext / thk)) + m1 + m2
        if n_s < 20:
            extra = 20 - n_s
            m1 += extra // 2
            m2 += extra - extra // 2
            n_s = 20
        break
    else:
        raise RuntimeError("could not fit anatomy")

    proto = {k: (v * rng.uniform(0.9, 1.1) if isinstance(v, float) else v) for k, v in spec["proto"].items()}
    gap = rng.uniform(1.0, 2.0) * sp  # label gap between touching bones (mm)
    cort, ct, fat_thk = rng.uniform(0.8, 1.5), rng.uniform(1.5, 3.0) * scale, rng.uniform(3, 9) * scale
    phys_half = rng.uniform(0.5, 0.9)
    s_start = s_lo - (m1 - 0.5) * thk  # centre of slice 0 along D[2], relative to c_fov
    nsub = 5
    offs = np.linspace(-0.6, 0.6, nsub) * thk  # slice profile extends slightly into neighbours
    wts = np.exp(-0.5 * (offs / (0.4 * thk)) ** 2)
    wts /= wts.sum()
    tex_f = ndimage.gaussian_filter(rng.standard_normal((n_a, n_b, n_s)).astype(F32), (1.0, 1.0, 0.3))
    tex_c = ndimage.gaussian_filter(rng.standard_normal((n_a, n_b, n_s)).astype(F32), (4.0, 4.0, 0.7))
    tex_f /= tex_f.std()
    tex_c /= tex_c.std()
    ia, ib = np.meshgrid((np.arange(n_a) - (n_a - 1) / 2) * sp, (np.arange(n_b) - (n_b - 1) / 2) * sp, indexing="ij")
    W0 = c_fov + ia.reshape(-1, 1) * D[0] + ib.reshape(-1, 1) * D[1]
    labv = np.array([b[1] for b in bones], np.uint8)
    img = np.zeros((n_a, n_b, n_s), F32)
    lab = np.zeros((n_a, n_b, n_s), np.uint8)
    for k in range(n_s):
        # nsub sub-slices across the slice profile; the label is taken from the central one
        W = (W0[None] + (s_start + k * thk + offs)[:, None, None] * D[2]).reshape(-1, 3)
        P = pose.to_anat(W)
        d = pose.bone_sdf(P)
        idx, dmin = d.argmin(0), d.min(0)
        d2 = np.partition(d, 1, axis=0)[1] if len(d) > 1 else np.full_like(dmin, 1e3)
        bone = (dmin < 0) & (dmin < d2 - 2 * gap)  # disjoint, gap between bones
        body, extras = spec["soft"](P)
        inbody = body * scale < 0
        tf, tc = np.tile(tex_f[:, :, k].ravel(), nsub), np.tile(tex_c[:, :, k].ravel(), nsub)
        val = np.zeros(W.shape[0], F32)
        val[inbody] = (proto["muscle"] * (1 + proto["tex_s"] * tc))[inbody]
        septa = np.abs(np.sin(np.stack(P, 1) @ septa_k.T + septa_p).sum(1)) < 0.12
        fat = inbody & ((body * scale > -fat_thk) | septa)
        for name, sd in extras:
            if name == "fat":
                fat |= inbody & (sd < 0)
        val[fat] = (proto["fat"] * (1 + proto["tex_s"] * tc))[fat]
        for name, sd in extras:
            if name != "fat":
                val[inbody & (sd < 0)] = proto[name]
        cart = inbody & ~bone & (((dmin >= 0) & (dmin < ct) & (d2 < ct + 5 * scale)) | (dmin < 0))
        val[cart] = proto["cart"]
        val[bone] = np.where(dmin > -cort, proto["cortex"], proto["marrow"] * (1 + proto["tex_m"] * tf))[bone]
        for bi, (name, _, _) in enumerate(bones):
            if name in spec["physes"]:
                shift, size = jitter[bi]
                ph = spec["physes"][name](tuple((P[i] - shift[i]) / size for i in range(3))) * size * scale
                val[bone & (idx == bi) & (np.abs(ph) < phys_half)] = proto["physis"]
        img[:, :, k] = (val.reshape(nsub, n_a, n_b) * wts[:, None, None]).sum(0)
        lab[:, :, k] = np.where(bone, labv[idx], 0).reshape(nsub, n_a, n_b)[nsub // 2]

    # acquisition effects: in-plane blur, smooth multiplicative bias, Rician noise, integer scaling
    img = ndimage.gaussian_filter(img, (0.5, 0.5, 0))
    g = np.meshgrid(*[np.linspace(-1, 1, n, dtype=F32) for n in (n_a, n_b, n_s)], indexing="ij")
    cb = rng.normal(0, 0.2, 8)
    img *= np.exp(
        cb[0] * g[0]
        + cb[1] * g[1]
        + 0.5 * cb[2] * g[2]
        + cb[3] * g[0] * g[1]
        + cb[4] * g[0] ** 2
        + cb[5] * g[1] ** 2
        + 0.5 * cb[6] * g[0] * g[2]
        + 0.5 * cb[7] * g[2] ** 2
    )
    sig = rng.uniform(*proto["noise"])
    img = np.sqrt((img + rng.normal(0, sig, img.shape)) ** 2 + rng.normal(0, sig, img.shape) ** 2)
    vmax = rng.uniform(1200, 4000)
    img = np.clip(np.rint(img / np.percentile(img, 99.9) * 0.92 * vmax), 0, vmax)

    # canonical (a, b, s) -> joint-specific array layout; affine columns follow the axes
    order = [0, 1]
    order.insert(spec["slice_axis"], 2)
    A = np.eye(4)
    cols = np.stack([D[0] * sp, D[1] * sp, D[2] * thk], 1)
    A[:3, :3] = cols[:, order]
    A[:3, 3] = c_fov - D[0] * sp * (n_a - 1) / 2 - D[1] * sp * (n_b - 1) / 2 + D[2] * s_start
    info = dict(scale=scale, sp=sp, thk=thk, shape=img.transpose(order).shape)
    return img.transpose(order).astype(spec["dtype"]), lab.transpose(order), A, info


def save(arr, A, path):
    """Write arr as NIfTI with affine A as both qform and sform (units mm)."""
    im = nib.Nifti1Image(arr, A)
    im.set_qform(A, code=1)
    im.set_sform(A, code=1)
    im.header.set_xyzt_units("mm")
    nib.save(im, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output folder (one nnU-Net raw dataset per joint)")
    ap.add_argument("--train", type=int, default=24, help="training cases per joint")
    ap.add_argument("--test", type=int, default=8, help="test cases per joint")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-distractors", action="store_true", help="omit unlabelled bones")
    args = ap.parse_args()
    for ji, joint in enumerate(sorted(JOINTS)):
        root = os.path.join(args.out, joint)
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        labels = {"background": 0}
        labels.update({name: label for name, label, _ in JOINTS[joint]["bones"] if label > 0})
        write_dataset_json(root, mri_dataset_json("SynthPed" + joint.capitalize(), labels, args.train))
        for ci in range(args.train + args.test):
            rng = np.random.default_rng([args.seed, ji, ci])
            img, lab, A, info = make_case(joint, rng, not args.no_distractors)
            case, tr = f"{joint}_{ci:03d}", ci < args.train
            save(img, A, os.path.join(root, "imagesTr" if tr else "imagesTs", image_file(case, FILE_ENDING)))
            save(lab, A, os.path.join(root, "labelsTr" if tr else "labelsTs", label_file(case, FILE_ENDING)))
            print(
                f"{case} {'Tr' if tr else 'Ts'} shape={info['shape']} sp={info['sp']:.3f} thk={info['thk']:.2f} "
                f"scale={info['scale']:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
