"""Synthetic pediatric joint MRI, written as nnU-Net v2 raw datasets (one dataset per joint).

Each case samples a child's age (2-16 years), which scales the bones. The anatomy is a set of
signed-distance shapes (ellipsoids, superellipsoids, capsules; millimetres, negative inside) in a limb
frame: x lateral (left-right), y anterior, z superior, origin at the joint space. Bones are carved so
they never touch, then rendered with the tissue intensities of the joint's MR contrast (cortex, marrow,
growth plates, cartilage, fluid, muscle compartments, fat, tendons), a multiplicative bias field,
partial-volume blur and Rician noise, and stored with the joint's anisotropic voxel spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from pedseg_core import __version__
from pedseg_core.data.joints import JOINT_BONES, joint_labels
from pedseg_core.data.nnunet import FILE_ENDING, image_file, label_file, mri_dataset_json, write_dataset_json
from pedseg_core.errors import PedsegError


@dataclass(frozen=True)
class Contrast:
    """Tissue intensities (MR signal units, before bias and noise) of one pulse sequence."""

    fat: float
    muscle: float
    tendon: float
    cartilage: float
    fluid: float
    yellow_marrow: float
    red_marrow: float
    cortex: float
    physis: float


@dataclass(frozen=True)
class Protocol:
    """One joint's acquisition: slice plane, voxel grid, contrast and noise."""

    plane: str  # "sagittal": thick slices across left-right; "coronal": across front-back
    inplane_mm: float
    slice_mm: float
    inplane_shape: tuple[int, int]  # voxels (superior-inferior, horizontal)
    n_slices: int
    through_axis: int  # axis of the stored array that holds the thick slices
    contrast: Contrast
    noise_sigma: float  # std of each channel of the complex Gaussian noise
    bias_strength: float  # std of the log bias field's polynomial coefficients


T1 = Contrast(fat=1050, muscle=420, tendon=40, cartilage=500, fluid=280,
              yellow_marrow=960, red_marrow=480, cortex=40, physis=320)  # bright fat and marrow
PD_FAT_SAT = Contrast(fat=170, muscle=520, tendon=50, cartilage=700, fluid=1350,
                      yellow_marrow=260, red_marrow=430, cortex=40, physis=130)  # dark fat, bright fluid
T2 = Contrast(fat=880, muscle=330, tendon=40, cartilage=430, fluid=1450,
              yellow_marrow=800, red_marrow=420, cortex=40, physis=230)  # bright fluid, fairly bright fat

PROTOCOLS: dict[str, Protocol] = {
    # joint:             plane, in-plane, slice, in-plane shape, slices, through axis, contrast, noise, bias
    "ankle": Protocol("sagittal", 0.7, 3.0, (128, 128), 20, 2, T1, 20.0, 0.12),
    "knee": Protocol("sagittal", 0.65, 3.5, (128, 128), 24, 0, PD_FAT_SAT, 28.0, 0.12),
    "shoulder": Protocol("coronal", 0.6, 4.0, (112, 128), 18, 1, T2, 36.0, 0.2),
}

# Age-dependent anatomy: (value at 2 years, value at 16 years), interpolated linearly with age.
AGE_YEARS = (2.0, 16.0)
BONE_SCALE = (0.5, 0.8)  # size relative to the adult reference shapes below
JOINT_GAP_MM = (6.0, 3.5)  # cartilage-filled joint space between articulating bones
CORTEX_MM = (0.7, 1.2)
PHYSIS_MM = (2.0, 1.1)
EPIPHYSIS_FAT = (0.6, 0.9)  # yellow-marrow fraction of epiphyses and short bones
METAPHYSIS_FAT = (0.15, 0.6)  # ... of metaphyses and shafts (red marrow converts later)
PATELLA_OSSIFIED = (0.65, 1.0)  # size of the patella's ossification centre relative to its cartilage

# Random variation between cases (on top of age).
SIZE_JITTER = 0.05  # relative size of the whole anatomy
GAP_JITTER = 0.1  # relative width of the joint spaces
BONE_SIZE_JITTER = 0.06  # relative size of each bone, per axis
BONE_POSE_DEGREES = 3.0  # largest rotation of each bone about its joint, per axis
LIMB_POSE_DEGREES = 4.0  # largest rotation of the limb in the scanner, per axis
FOV_JITTER_MM = 3.0  # largest offset of the field-of-view centre from the joint, per axis
PHYSIS_UNDULATION_MM = (0.8, 1.6)  # amplitude range of the growth plates' waviness


def _lerp(bounds: tuple[float, float], fraction: float) -> float:
    return bounds[0] + fraction * (bounds[1] - bounds[0])


# ---------------------------------------------------------------------------------------------------
# Signed-distance shapes. ``q`` is a tuple of three coordinate arrays (x, y, z) of equal shape, in mm.
# ---------------------------------------------------------------------------------------------------


def _ellipsoid(q, center, radii, exponent: float = 2.0) -> np.ndarray:
    """Approximate signed distance to a superellipsoid (exponent 2: ellipsoid; larger: boxier)."""
    center, radii = [float(c) for c in center], [float(r) for r in radii]  # keep float32 arithmetic
    a = [np.abs(q[i] - center[i]) / radii[i] for i in range(3)]
    if exponent == 2.0:
        f = np.sqrt(a[0] ** 2 + a[1] ** 2 + a[2] ** 2)
        grad = np.sqrt((a[0] / radii[0]) ** 2 + (a[1] / radii[1]) ** 2 + (a[2] / radii[2]) ** 2)
        grad /= np.maximum(f, 1e-6)
    else:
        f = (a[0] ** exponent + a[1] ** exponent + a[2] ** exponent) ** (1.0 / exponent)
        parts = sum((a[i] ** (exponent - 1) / radii[i]) ** 2 for i in range(3))
        grad = np.sqrt(parts) * np.maximum(f, 1e-6) ** (1.0 - exponent)
    return np.maximum((f - 1.0) / np.maximum(grad, 1e-6), -min(radii))


def _capsule(q, a, b, radius_a: float, radius_b: float | None = None) -> np.ndarray:
    """Signed distance to a (tapered) capsule around the segment a-b."""
    radius_b = radius_a if radius_b is None else radius_b
    ab = [float(b[i] - a[i]) for i in range(3)]
    pa = [q[i] - float(a[i]) for i in range(3)]
    t = np.clip(sum(pa[i] * ab[i] for i in range(3)) / sum(v * v for v in ab), 0.0, 1.0)
    distance = np.sqrt(sum((pa[i] - t * ab[i]) ** 2 for i in range(3)))
    return distance - (radius_a + t * (radius_b - radius_a))


def _union(*sdfs: np.ndarray, k: float = 5.0) -> np.ndarray:
    """Smooth union (polynomial smooth minimum, blend width ``k`` mm)."""
    result = sdfs[0]
    for sdf in sdfs[1:]:
        h = np.clip(0.5 + 0.5 * (sdf - result) / k, 0.0, 1.0)
        result = sdf + h * (result - sdf) - k * h * (1.0 - h)
    return result


def _rotation(degrees) -> np.ndarray:
    """3x3 rotation from angles (degrees) about x, then y, then z."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _transform(q, matrix: np.ndarray, pivot=(0.0, 0.0, 0.0)):
    """Coordinates ``matrix @ (q - pivot) + pivot``."""
    matrix, pivot = np.asarray(matrix, dtype=np.float32), np.asarray(pivot, dtype=np.float32)
    d = [q[i] - pivot[i] for i in range(3)]
    return tuple(matrix[i, 0] * d[0] + matrix[i, 1] * d[1] + matrix[i, 2] * d[2] + pivot[i] for i in range(3))


def _jitter(q, pivot, rng: np.random.Generator):
    """Coordinates of one bone's small random pose (rotation about ``pivot``) and size."""
    size = rng.uniform(1 - BONE_SIZE_JITTER, 1 + BONE_SIZE_JITTER, 3)
    matrix = _rotation(rng.uniform(-BONE_POSE_DEGREES, BONE_POSE_DEGREES, 3)) @ np.diag(1.0 / size)
    return _transform(q, matrix, pivot)


def _waves(q, rng: np.random.Generator, wavelength_mm: float, n_waves: int = 6) -> np.ndarray:
    """Smooth zero-mean random field of about unit std: a sum of random plane waves.

    Each wave is a product of per-coordinate complex exponentials, cheap when ``q`` is an open grid.
    """
    field = 0
    for _ in range(n_waves):
        direction = rng.normal(size=3)
        wavelength = wavelength_mm * rng.uniform(0.7, 1.3)
        k = (direction * 2 * np.pi / (wavelength * np.linalg.norm(direction))).tolist()
        phase = float(rng.uniform(0, 2 * np.pi))
        wave = np.exp(1j * (k[0] * q[0] + phase)) * np.exp(1j * k[1] * q[1]) * np.exp(1j * k[2] * q[2])
        field = field + wave
    return (field.real * np.sqrt(2.0 / n_waves)).astype(np.float32)


def _plate_height(q, surface, rng: np.random.Generator) -> np.ndarray:
    """Signed height (mm) of points above a growth plate: the surface z = ``surface``, gently undulating."""
    amplitude = rng.uniform(*PHYSIS_UNDULATION_MM, 2).tolist()
    phase = rng.uniform(0, 2 * np.pi, 2).tolist()
    undulation = amplitude[0] * np.sin(q[0] / 8.0 + phase[0]) + amplitude[1] * np.sin(q[1] / 10.0 + phase[1])
    return q[2] - (surface + undulation)


@dataclass
class Scene:
    """One case's anatomy as signed distances (reference mm, negative inside), each shaped like the grid."""

    bones: dict[str, np.ndarray]  # every bone, in carving priority (an earlier bone carves later ones)
    physes: dict[str, np.ndarray]  # long bone -> signed height above its growth plate, + on the epiphysis
    body: np.ndarray
    fat: list[np.ndarray]  # fat pads
    dark: list[np.ndarray]  # tendons, ligaments and vessels (flow voids)
    joint: np.ndarray  # joint capsule: where cartilage lies on bone
    margins: np.ndarray  # where the joint margins hold fluid recesses and fibrocartilage wedges
    wedge_mm: float = 0.0  # reach of the dark fibrocartilage wedges (menisci, labrum); 0: none


# Anatomy builders: (q, gap, maturity, rng) -> Scene. ``q`` holds limb-frame coordinates in reference mm
# (adult-sized shapes; the case's scale maps them to the child), ``gap`` is the joint space in reference mm,
# ``maturity`` runs from 0 (2 years) to 1 (16 years). Each bone gets its own small random pose.


def _knee(q, gap: float, maturity: float, rng: np.random.Generator) -> Scene:
    """Sagittal knee: distal femur (two condyles) above the proximal tibia, patella in front of the femur."""
    h = gap / 2
    fq = _jitter(q, (0, 0, h), rng)
    femur = _union(
        _ellipsoid(fq, (-19, -11, h + 21), (14, 25, 21)),  # medial condyle, bulging backwards
        _ellipsoid(fq, (19, -11, h + 21), (14, 25, 21)),  # lateral condyle
        _ellipsoid(fq, (0, 5, h + 26), (31, 18, 15)),  # trochlea
        _ellipsoid(fq, (0, 3, h + 36), (33, 19, 10)),  # metaphysis: flares towards the growth plate
        _capsule(fq, (0, 3, h + 36), (0, 6, h + 90), 19, 13),
        _capsule(fq, (0, 6, h + 90), (0, 6, 250), 13),  # shaft, in line with the front of the femur
        k=8,
    )
    femur = np.maximum(femur, -_ellipsoid(fq, (0, -16, h), (7, 22, 15)))  # intercondylar notch
    tq = _jitter(q, (0, 0, -h), rng)
    tibia = _union(
        _ellipsoid(tq, (0, -4, -h - 10), (34, 25, 13), exponent=3.0),  # plateau, carved by the condyles
        _ellipsoid(tq, (-5, -2, -h), (3, 6, 7)),  # tibial spines
        _ellipsoid(tq, (5, -2, -h), (3, 6, 7)),
        _ellipsoid(tq, (0, -3, -h - 24), (30, 22, 10)),  # metaphysis: flares towards the growth plate
        _capsule(tq, (0, -4, -h - 26), (0, -7, -h - 80), 19, 13),
        _ellipsoid(tq, (0, 15, -h - 36), (9, 8, 14)),  # tibial tuberosity
        _capsule(tq, (0, -7, -h - 80), (0, -8, -250), 13),  # shaft
        k=8,
    )
    radii = np.multiply((20, 10, 19), _lerp(PATELLA_OSSIFIED, maturity) * rng.uniform(0.9, 1.05))
    pq = _jitter(q, (0, 24 + gap, h + 26), rng)
    patella = _ellipsoid(pq, (0, 22 + gap + radii[1], h + 26), radii)
    fibula = _union(
        _ellipsoid(tq, (27, -17, -h - 22), (9, 9, 11)),
        _capsule(tq, (28, -18, -h - 30), (30, -20, -250), 6),
    )
    body = _ellipsoid(q, (0, -6, 0), (58, 62, 1000))
    fat = [
        _ellipsoid(q, (0, 27, -h - 5), (16, 9, 11)),  # Hoffa's fat pad
        _ellipsoid(q, (0, 28, h + 58), (14, 8, 12)),  # suprapatellar fat pad
        _ellipsoid(q, (0, -46, 0), (18, 12, 40)),  # popliteal fat
    ]
    flat = (q[0] * 0.25, q[1], q[2])  # tendons: wide and thin
    dark = [
        _capsule(flat, (0, 36, h + 10), (0, 22, -h - 38), 3.0),  # patellar tendon
        _capsule(flat, (0, 34, h + 44), (0, 22, 150), 4.0),  # quadriceps tendon
        _capsule(q, (0, -12, h + 12), (0, -26, -h - 8), 3.5),  # posterior cruciate ligament
        _capsule(q, (3, -14, h + 16), (0, 6, -h - 2), 3.0),  # anterior cruciate ligament
        _capsule(q, (-2, -40, 200), (-2, -36, -200), 3.0),  # popliteal artery
    ]
    physes = {"femur": -_plate_height(fq, h + 30, rng), "tibia": _plate_height(tq, -h - 18, rng)}
    joint = _ellipsoid(q, (0, 4, 10), (44, 44, 36))
    menisci = np.maximum(joint, 7.0 - np.abs(q[0]))  # medial and lateral compartments, not the notch
    bones = {"patella": patella, "femur": femur, "tibia": tibia, "fibula": fibula}
    return Scene(bones, physes, body, fat, dark, joint, menisci, wedge_mm=7.0)


def _ankle(q, gap: float, maturity: float, rng: np.random.Generator) -> Scene:
    """Sagittal ankle: distal tibia above the talus, calcaneus below and behind the talus."""
    h = gap / 2
    aq = _jitter(q, (0, 0, -h), rng)
    talus = _union(
        _ellipsoid(aq, (0, -1, -h - 15), (15, 18, 15)),  # body with its dome
        _ellipsoid(aq, (0, 21, -h - 21), (12, 12, 10)),  # neck and head
        _ellipsoid(aq, (0, -17, -h - 22), (7, 6, 6)),  # posterior process
    )
    tq = _jitter(q, (0, 0, h), rng)
    tibia = _union(
        _ellipsoid(tq, (0, 0, h + 5), (21, 19, 8), exponent=2.5),  # epiphysis, carved by the talar dome
        _capsule(tq, (0, 1, h + 14), (0, 2, h + 50), 17, 11),  # metaphysis: flares towards the growth plate
        _capsule(tq, (0, 2, h + 50), (0, 3, 250), 11),  # shaft
        _capsule(tq, (-16, 2, h + 8), (-18, 3, -h - 12), 6),  # medial malleolus
        k=8,
    )
    cq = _jitter(q, (0, -5, -h - 30), rng)
    calcaneus = _union(
        _ellipsoid(cq, (0, -6, -h - 42), (14, 27, 12), exponent=2.6),  # body, under the talus
        _ellipsoid(cq, (0, -31, -h - 42), (13, 10, 17)),  # tuberosity
        _ellipsoid(cq, (0, 16, -h - 45), (11, 13, 9)),  # anterior process
        _ellipsoid(cq, (-12, 2, -h - 33), (7, 9, 5)),  # sustentaculum tali
        k=6,
    )
    fibula = _union(
        _capsule(tq, (19, -5, -h - 14), (18, -6, h + 20), 7),
        _capsule(tq, (18, -6, h + 20), (17, -7, 250), 6),
    )
    navicular = _ellipsoid(aq, (0, 40, -h - 22), (13, 6, 11))
    cuboid = _ellipsoid(cq, (5, 36, -h - 48), (11, 9, 10))
    body = _union(
        _capsule((q[0] * 0.8, q[1], q[2]), (0, -8, -30), (0, -8, 300), 36),  # leg
        _capsule((q[0] * 0.6, q[1], q[2]), (0, -32, -h - 44), (0, 200, -h - 40), 24),  # foot (wide, flat)
        k=20,
    )
    fat = [
        _ellipsoid(q, (0, -27, h + 6), (10, 8, 26)),  # Kager's fat pad
        _ellipsoid(q, (0, -25, -h - 64), (18, 22, 8)),  # heel pad
        _ellipsoid(q, (0, 8, -h - 32), (10, 8, 6)),  # sinus tarsi
    ]
    flat = (q[0] * 0.35, q[1], q[2])
    dark = [
        _capsule(flat, (0, -40, 150), (0, -41, -h - 34), 3.5),  # Achilles tendon
        _capsule(q, (-8, 24, 150), (-10, 33, -h - 10), 3.0),  # tibialis anterior
        _capsule(q, (0, -17, h + 40), (0, -20, -h - 30), 2.5),  # flexor hallucis longus
        _capsule(flat, (0, -28, -h - 58), (0, 50, -h - 56), 1.5),  # plantar fascia
    ]
    physes = {"tibia": -_plate_height(tq, h + 12, rng)}
    joint = _ellipsoid(q, (0, 5, -h - 18), (30, 45, 30))
    bones = {
        "talus": talus, "tibia": tibia, "calcaneus": calcaneus,
        "fibula": fibula, "navicular": navicular, "cuboid": cuboid,
    }
    return Scene(bones, physes, body, fat, dark, joint, joint)


def _shoulder(q, gap: float, maturity: float, rng: np.random.Generator) -> Scene:
    """Coronal shoulder: humeral head against the glenoid cup of a thin scapular plate."""
    h, r = gap / 2, 22.0  # r: humeral head radius
    hq = _jitter(q, (h, 0, 0), rng)
    humerus = _union(
        _ellipsoid(hq, (h + r, 0, 2), (r, r, r * 1.05)),  # head, medial to the shaft
        _ellipsoid(hq, (h + r + 15, 3, 2), (9, 12, 14)),  # greater tuberosity
        _capsule(hq, (h + r + 8, 0, -12), (h + r + 11, 0, -45), 15, 11),  # metaphysis
        _capsule(hq, (h + r + 11, 0, -45), (h + r + 14, 0, -250), 11),  # shaft
        k=6,
    )
    # Oblique-coronal slices follow the glenoid and scapular neck; the body turns backwards medially.
    sq = _jitter(q, (-h, 0, 0), rng)
    bq = _transform(sq, _rotation((0, 0, -12)), (-h - 30, 0, -8))
    scapula = _union(
        _ellipsoid(sq, (-h - 4, 0, 0), (9, 12, 19), exponent=2.5),  # glenoid, carved into a cup by the head
        _capsule(sq, (-h - 8, 0, -3), (-h - 30, 0, -10), 10, 7),  # neck
        _ellipsoid(bq, (-h - 55, 0, -22), (36, 3.0, 46), exponent=2.2),  # body: a thin plate
        _capsule(bq, (-h - 20, 0, -14), (-h - 44, 0, -80), 4.5),  # lateral border
        _capsule(bq, (-h - 40, -6, 22), (-h - 55, -2, 0), 5),  # spine
        _capsule(sq, (-h - 6, 4, 16), (-h, 24, 26), 5),  # coracoid
        _capsule(sq, (-h - 34, -12, 32), (h + 24, -3, 35), 5.5),  # acromion, above the humeral head
        k=6,
    )
    clavicle = _capsule(q, (h + 10, 10, 47), (-h - 90, 16, 53), 7)
    body = _union(
        _ellipsoid(q, (h + r - 2, 0, 4), (46, 44, 50)),  # deltoid cap
        _capsule(q, (h + r + 8, 0, 0), (h + r + 20, 0, -300), 38),  # arm
        _ellipsoid(q, (-110, 0, -60), (110, 80, 110)),  # chest
        _ellipsoid(q, (-70, -5, 40), (60, 50, 30)),  # trapezius
        k=20,
    )
    subdeltoid = np.abs(_ellipsoid(q, (h + r, 0, 2), (r + 11, r + 11, r + 12))) - 1.5
    fat = [np.maximum(subdeltoid, np.maximum(h + r - 6 - q[0], -12 - q[2]))]  # stripe under the deltoid
    cuff = np.abs(_ellipsoid(hq, (h + r, 0, 2), (r + 4, r + 4, r + 4.5))) - 2.0  # rotator cuff over the head
    dark = [np.maximum(cuff, np.maximum(10 - hq[2], hq[0] - h - 2 * r))]  # supraspinatus, to the tuberosity
    apex = h + r + 4  # the growth plate is a tent under the head, peaking just lateral to its centre
    physes = {"humerus": _plate_height(hq, -2 - 0.45 * np.abs(hq[0] - apex), rng)}
    joint = _ellipsoid(q, (0, 0, 0), (22, 28, 28))
    bones = {"humerus": humerus, "scapula": scapula, "clavicle": clavicle}
    return Scene(bones, physes, body, fat, dark, joint, joint, wedge_mm=5.0)


ANATOMY = {"ankle": _ankle, "knee": _knee, "shoulder": _shoulder}
FOV_CENTER_MM = {"ankle": (0.0, 2.0, -20.0), "knee": (0.0, 6.0, 8.0), "shoulder": (14.0, 0.0, 0.0)}

# Rendering constants (mm unless noted).
DEFORM_MM = 0.8  # amplitude of the smooth random bone-surface deformation
BODY_DEFORM_MM = 3.0  # ... of the skin surface
FAT_DEFORM_MM = 0.8  # ... of fat pads
DEFORM_WAVELENGTH_MM = (30.0, 40.0)  # wavelength of those deformations: bones, soft tissue
MIN_SOFT_TISSUE_MM = 4.0  # skin is at least this far from any bone
SUBCUTANEOUS_FAT_MM = (2.0, 5.0)
N_COMPARTMENTS = 6  # muscle compartments (Voronoi cells with wavy borders)
FASCIA_WAVE_MM = (6.0, 20.0)  # amplitude and wavelength of the compartment borders' waviness
SEPTUM_MM = 0.6  # fat septa between compartments
COMPARTMENT_CONTRAST = 0.12  # relative intensity spread between compartments
MUSCLE_GRAIN_MM = (2.0, 0.5, 0.5)  # muscle texture: streaks along the limb (superior-inferior) axis
MARROW_GRAIN_MM = (0.7, 0.7, 0.7)  # trabecular texture
TEXTURE_CONTRAST = (0.07, 0.1)  # relative texture amplitude: soft tissue, marrow
CARTILAGE_OVERLAP_MM = 0.5  # each bone's cartilage reaches this far past the middle of the joint space
FLUID_MM = 0.8  # joint fluid lining the cartilage ...
RECESS_MM = 4.0  # ... where a second bone is this close: in the recesses at the joint margins
GAIN = (0.85, 1.15)  # per-case scanner gain
BLUR_VOXELS = (0.6, 0.6, 0.3)  # partial-volume blur (in-plane, in-plane, through-plane)
OBLIQUE_DEGREES = (3.0, 20.0)  # rotation of the voxel grid in the scanner frame
ORIGIN_MM = 60.0  # the affine's origin is uniform in +-ORIGIN_MM per axis


def _grid_frame(protocol: Protocol, center_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear map from canonical voxel indices (superior-inferior, horizontal, slice) to limb-frame mm.

    Returns (matrix (3, 3), offset (3,)): ``mm = matrix @ index + offset``, the grid centred on ``center_mm``.
    Sagittal: rows run down, columns run back (anterior on the left). Coronal: columns run laterally.
    """
    d, s = protocol.inplane_mm, protocol.slice_mm
    if protocol.plane == "sagittal":
        matrix = np.array([[0, 0, s], [0, -d, 0], [-d, 0, 0]], dtype=float)
    else:
        matrix = np.array([[0, d, 0], [0, 0, s], [-d, 0, 0]], dtype=float)
    middle = (np.array([*protocol.inplane_shape, protocol.n_slices]) - 1) / 2
    return matrix, center_mm - matrix @ middle


def _oblique_affine(matrix: np.ndarray, offset: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """4x4 voxel-to-world affine: the grid map turned about a random axis, with a random origin."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(*OBLIQUE_DEGREES))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) * np.cos(angle) + np.sin(angle) * cross + (1 - np.cos(angle)) * np.outer(axis, axis)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ matrix
    affine[:3, 3] = rotation @ offset + rng.uniform(-ORIGIN_MM, ORIGIN_MM, 3)
    return affine


def _texture(shape, grain_mm, spacing, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise of unit std; shape ``shape``, grain (per canonical axis) in mm."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, np.divide(grain_mm, spacing))
    return noise / noise.std()


def _muscle(grid, contrast: Contrast, rng: np.random.Generator) -> np.ndarray:
    """Muscle compartments (Voronoi cells with wavy borders, each its own intensity) split by fat septa."""
    low, high = [float(c.min()) for c in grid], [float(c.max()) for c in grid]
    seeds = rng.uniform(low, high, size=(N_COMPARTMENTS, 3))
    levels = contrast.muscle * (1 + COMPARTMENT_CONTRAST * rng.uniform(-1, 1, N_COMPARTMENTS))
    waves = _waves(grid, rng, FASCIA_WAVE_MM[1]), _waves(grid, rng, FASCIA_WAVE_MM[1])
    nearest = np.full(np.broadcast_shapes(*(c.shape for c in grid)), np.inf, dtype=np.float32)
    second = nearest.copy()
    image = np.zeros_like(nearest)
    for seed, level, angle in zip(seeds, levels, rng.uniform(0, 2 * np.pi, N_COMPARTMENTS)):
        distance = np.sqrt(sum((grid[i] - seed[i]) ** 2 for i in range(3)))
        distance += FASCIA_WAVE_MM[0] * (np.cos(angle) * waves[0] + np.sin(angle) * waves[1])
        closer = distance < nearest
        second = np.where(closer, nearest, np.minimum(second, distance))
        nearest = np.where(closer, distance, nearest)
        image[closer] = level
    image[second - nearest < SEPTUM_MM] = contrast.fat
    return image


def _render(
    scene: Scene, joint: str, protocol: Protocol, scale: float, gap: float, maturity: float, grid, rng
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy image (float32) and labels (uint8) of a scene, both of the grid's shape (rows, columns, slices).

    ``scale`` maps the scene's reference mm to mm; ``gap`` (mm) is the joint space; ``grid`` the open grid.
    """
    contrast, shape = protocol.contrast, np.broadcast_shapes(*(c.shape for c in grid))
    spacing = (protocol.inplane_mm, protocol.inplane_mm, protocol.slice_mm)

    # Bones: deform, then carve in priority order so that each bone keeps ``gap`` mm from earlier ones.
    waves = _waves(grid, rng, DEFORM_WAVELENGTH_MM[0]), _waves(grid, rng, DEFORM_WAVELENGTH_MM[0])
    bones, masks = {}, {}
    nearest_bone, second_bone = np.full(shape, np.inf, np.float32), np.full(shape, np.inf, np.float32)
    occupied = np.zeros(shape, dtype=bool)
    for name, sdf in scene.bones.items():
        angle = rng.uniform(0, 2 * np.pi)
        distance = sdf * scale + DEFORM_MM * (np.cos(angle) * waves[0] + np.sin(angle) * waves[1])
        distance = np.maximum(distance, gap - nearest_bone)
        second_bone = np.minimum(second_bone, np.maximum(nearest_bone, distance))
        nearest_bone = np.minimum(nearest_bone, distance)
        bones[name] = distance
        masks[name] = (distance < 0) & ~ndimage.binary_dilation(occupied)  # never face-adjacent
        occupied |= masks[name]
    labels = np.zeros(shape, dtype=np.uint8)
    for value, name in enumerate(JOINT_BONES[joint], start=1):
        labels[masks[name]] = value

    # Soft tissue: muscle compartments, fat, tendons, cartilage and fluid in the joint.
    soft_waves = _waves(grid, rng, DEFORM_WAVELENGTH_MM[1])
    body = np.minimum(scene.body * scale + BODY_DEFORM_MM * soft_waves, nearest_bone - MIN_SOFT_TISSUE_MM)
    image = _muscle(grid, contrast, rng)
    for fat in scene.fat:
        image[fat * scale + FAT_DEFORM_MM * soft_waves < 0] = contrast.fat
    image[body > -rng.uniform(*SUBCUTANEOUS_FAT_MM)] = contrast.fat
    image *= 1 + TEXTURE_CONTRAST[0] * _texture(shape, MUSCLE_GRAIN_MM, spacing, rng)
    for dark in scene.dark:
        image[dark * scale < 0] = contrast.tendon
    in_joint = (scene.joint * scale < 0) & ~occupied
    cartilage_mm = gap / 2 + CARTILAGE_OVERLAP_MM
    image[in_joint & (nearest_bone < cartilage_mm)] = contrast.cartilage
    margin = (scene.margins * scale < 0) & ~occupied & (nearest_bone >= cartilage_mm)
    wedge = margin & (nearest_bone + second_bone < gap + 2 * scene.wedge_mm * scale)
    fluid = margin & ~wedge & (nearest_bone < cartilage_mm + FLUID_MM)
    image[fluid & (second_bone < cartilage_mm + FLUID_MM + RECESS_MM)] = contrast.fluid
    image[wedge] = contrast.tendon

    # Bone: marrow (red in young metaphyses, yellow in epiphyses), dark cortex and growth plates.
    grain = 1 + TEXTURE_CONTRAST[1] * _texture(shape, MARROW_GRAIN_MM, spacing, rng)
    cortex_mm, physis_mm = _lerp(CORTEX_MM, maturity), _lerp(PHYSIS_MM, maturity)
    epiphysis_fat, metaphysis_fat = _lerp(EPIPHYSIS_FAT, maturity), _lerp(METAPHYSIS_FAT, maturity)
    for name, mask in masks.items():
        fat_fraction = np.full(shape, epiphysis_fat, dtype=np.float32)
        physis = np.zeros(shape, dtype=bool)
        if name in scene.physes:
            height = scene.physes[name] * scale
            fat_fraction[height < 0] = metaphysis_fat
            physis = np.abs(height) < physis_mm / 2
        marrow = contrast.red_marrow + fat_fraction * (contrast.yellow_marrow - contrast.red_marrow)
        image[mask] = (marrow * grain)[mask]
        cortex = mask & (bones[name] > -cortex_mm)
        image[mask & physis & ~cortex] = contrast.physis
        image[cortex] = contrast.cortex
    image[body > 0] = 0.0

    # Acquisition: gain, smooth bias field (quadratic log-polynomial), partial-volume blur, Rician noise.
    u = [(c - (float(c.max()) + float(c.min())) / 2) / (float(c.max()) - float(c.min()) + 1e-6) for c in grid]
    terms = [u[0], u[1], u[2], u[0] * u[1], u[0] * u[2], u[1] * u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2]
    log_bias = sum(c * t for c, t in zip(rng.normal(0, protocol.bias_strength, len(terms)), terms))
    image = ndimage.gaussian_filter(image * np.exp(log_bias) * rng.uniform(*GAIN), BLUR_VOXELS)
    sigma = protocol.noise_sigma
    real = image + sigma * rng.standard_normal(shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(shape, dtype=np.float32)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32), labels


def synthesize_case(joint: str, seed: int, case: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic case: (image float32, labels uint8, affine (4, 4)); arrays in the stored axis order.

    Deterministic in (joint, seed, case): the case's random stream is spawned from ``seed``.
    """
    joint_labels(joint)
    protocol = PROTOCOLS[joint]
    stream = np.random.SeedSequence(seed, spawn_key=(list(JOINT_BONES).index(joint), case))
    rng = np.random.default_rng(stream)
    age = rng.uniform(*AGE_YEARS)
    maturity = (age - AGE_YEARS[0]) / (AGE_YEARS[1] - AGE_YEARS[0])  # 0 at 2 years, 1 at 16
    scale = _lerp(BONE_SCALE, maturity) * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)
    gap = _lerp(JOINT_GAP_MM, maturity) * rng.uniform(1 - GAP_JITTER, 1 + GAP_JITTER)
    center = np.multiply(FOV_CENTER_MM[joint], scale) + rng.uniform(-FOV_JITTER_MM, FOV_JITTER_MM, 3)
    matrix, offset = _grid_frame(protocol, center)
    index = np.ogrid[: protocol.inplane_shape[0], : protocol.inplane_shape[1], : protocol.n_slices]
    # Coordinates (mm) of the voxel centres as an open grid: each one depends on a single array axis.
    grid = tuple(
        (sum(m * i for m, i in zip(row, index) if m) + o).astype(np.float32) for row, o in zip(matrix, offset)
    )
    limb = _transform(grid, _rotation(rng.uniform(-LIMB_POSE_DEGREES, LIMB_POSE_DEGREES, 3)))
    scene = ANATOMY[joint](tuple(c / scale for c in limb), gap / scale, maturity, rng)
    image, labels = _render(scene, joint, protocol, scale, gap, maturity, grid, rng)
    order = [0, 1]
    order.insert(protocol.through_axis, 2)  # stored axis i is canonical axis order[i]
    image = np.ascontiguousarray(np.moveaxis(image, 2, protocol.through_axis))
    labels = np.ascontiguousarray(np.moveaxis(labels, 2, protocol.through_axis))
    return image, labels, _oblique_affine(matrix[:, order], offset, rng)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PedsegError(f"output folder {out_dir} is not empty; choose a new folder or empty it first")


def _check_counts(n_train: int, n_test: int, seed: int) -> None:
    if n_train < 1 or n_test < 0:
        raise PedsegError(f"need n_train >= 1 and n_test >= 0 (got n_train={n_train}, n_test={n_test})")
    if seed < 0:
        raise PedsegError(f"seed must be a non-negative integer (got {seed})")


def synthesize_joint(out_dir: Path, joint: str, n_train: int, n_test: int, seed: int) -> Path:
    """Write one nnU-Net v2 raw dataset for `joint` into out_dir.

    out_dir is created; it must be empty or absent, else PedsegError. Returns out_dir.
    """
    out_dir = Path(out_dir)
    labels = joint_labels(joint)
    _check_counts(n_train, n_test, seed)
    _check_target(out_dir)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for case in range(n_train + n_test):
        image, label, affine = synthesize_case(joint, seed, case)
        split = "Tr" if case < n_train else "Ts"
        _save(image, affine, out_dir / f"images{split}" / image_file(f"{joint}_{case:03d}", FILE_ENDING))
        _save(label, affine, out_dir / f"labels{split}" / label_file(f"{joint}_{case:03d}", FILE_ENDING))
    protocol = PROTOCOLS[joint]
    description = f"synthetic pediatric {joint} MRI ({protocol.plane}, {protocol.slice_mm} mm slices)"
    write_dataset_json(out_dir, mri_dataset_json(joint, labels, n_train, description, numTest=n_test, joint=joint,
                                                 generator=f"pedseg synth {__version__}", seed=seed))
    return out_dir


def synthesize(out: Path, joints: Sequence[str], n_train: int, n_test: int, seed: int) -> dict[str, Path]:
    """One dataset per joint at out/<joint>/ ; returns {joint: path}."""
    out = Path(out)
    if not joints or len(set(joints)) != len(joints):
        known = ", ".join(JOINT_BONES)
        raise PedsegError(f"give one or more distinct joints out of {known} (got {list(joints)})")
    for joint in joints:
        joint_labels(joint)
        _check_target(out / joint)
    _check_counts(n_train, n_test, seed)
    return {joint: synthesize_joint(out / joint, joint, n_train, n_test, seed) for joint in joints}
