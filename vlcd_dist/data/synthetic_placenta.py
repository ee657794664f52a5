"""The built-in synthetic placenta set: fetal-side photographs, pathology reports and labels.

Every sample is drawn from one :class:`Case`, so image, report and labels cannot disagree: the
case holds the labels, a severity per positive finding (0 = absent, 0.15..1 = faint..obvious) and
the anatomy (disc size, cord insertion, membranes). :func:`render_case` paints the photograph and
:func:`write_report` describes the same case in clinical language, one sentence per finding.

Everything is a pure function of ``(seed, index)``, so shards are reproducible and a resumed
write produces the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TASKS: tuple[str, ...] = ("meconium", "fir", "mir", "chorioamnionitis", "sepsis")
DEFAULT_SIZE: tuple[int, int] = (512, 384)  # width x height: the paper's 4:3 landscape photos


@dataclass
class Case:
    """One synthetic placenta: what is true of it, before it is drawn or described.

    severity maps each task to 0 (absent) or a strength in [0.15, 1] (faint .. obvious).
    Lengths are in centimetres, the weight in grams, angles in radians.
    """

    severity: dict[str, float]
    disc_major_cm: float
    disc_minor_cm: float
    thickness_cm: float
    weight_g: float
    insertion: str  # central | eccentric | marginal | velamentous
    insertion_rho: float  # distance of the cord insertion from the centre, in disc radii
    insertion_phi: float
    cord_length_cm: float
    cord_diameter_cm: float
    membrane_extent: float  # how far the trailing membranes reach beyond the disc, in radii
    infarct_cm: float  # 0 = none; on the maternal side, so only the report mentions it
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, int]:
        return {t: int(self.severity[t] > 0) for t in TASKS}


def _severity(rng: np.random.Generator, positive: bool) -> float:
    # Skewed towards faint traces: an obvious finding is the exception, as in real photographs.
    return float(0.15 + 0.85 * rng.beta(1.2, 1.6)) if positive else 0.0


def sample_case(rng: np.random.Generator) -> Case:
    """Draw labels with clinically plausible correlations, then severities and anatomy.

    Histologic chorioamnionitis drives both the maternal (MIR) and the fetal (FIR) inflammatory
    responses; neonatal sepsis is more likely with any of the three. Meconium is independent.
    Prevalences come out near: meconium 22%, chorioamnionitis 28%, MIR 26%, FIR 19%, sepsis 17%.
    """
    chorio = rng.random() < 0.28
    mir = rng.random() < (0.72 if chorio else 0.09)
    fir = rng.random() < (0.55 if chorio else 0.05) or (mir and rng.random() < 0.15)
    sepsis_p = 0.05 + 0.22 * fir + 0.12 * mir + 0.10 * chorio
    sepsis = rng.random() < sepsis_p
    meconium = rng.random() < 0.22
    positive = {
        "meconium": meconium,
        "fir": fir,
        "mir": mir,
        "chorioamnionitis": chorio,
        "sepsis": sepsis,
    }
    severity = {t: _severity(rng, positive[t]) for t in TASKS}

    major = float(rng.uniform(15.0, 22.0))
    aspect = float(rng.uniform(0.78, 0.96))
    thickness = float(rng.uniform(1.5, 3.0))
    weight = float(0.55 * major * major * aspect * thickness * rng.uniform(0.85, 1.15))
    u = rng.random()
    if u < 0.05:
        insertion, rho = "velamentous", float(rng.uniform(1.08, 1.25))
    elif u < 0.20:
        insertion, rho = "marginal", float(rng.uniform(0.84, 0.93))
    elif u < 0.60:
        insertion, rho = "eccentric", float(rng.uniform(0.35, 0.78))
    else:
        insertion, rho = "central", float(rng.uniform(0.0, 0.3))
    return Case(
        severity=severity,
        disc_major_cm=major,
        disc_minor_cm=major * aspect,
        thickness_cm=thickness,
        weight_g=weight,
        insertion=insertion,
        insertion_rho=rho,
        insertion_phi=float(rng.uniform(-math.pi, math.pi)),
        cord_length_cm=float(rng.uniform(35.0, 65.0)),
        # Funisitis swells Wharton's jelly: an inflamed cord can be twice as thick.
        cord_diameter_cm=float(rng.uniform(1.0, 1.6) * (1.0 + 1.0 * severity["fir"])),
        membrane_extent=float(rng.uniform(0.15, 0.45)),
        infarct_cm=float(rng.uniform(0.5, 2.5)) if rng.random() < 0.2 else 0.0,
    )


# --------------------------------------------------------------------------------------------
# Rendering


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], shape (h, w): random values on a coarse grid, upsampled."""
    gh = max(2, cells * h // max(h, w) + 1)
    gw = max(2, cells * w // max(h, w) + 1)
    coarse = (rng.random((gh, gw)) * 255).astype(np.uint8)
    up = Image.fromarray(coarse, "L").resize((w, h), Image.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 255.0


def _to_l(alpha: np.ndarray) -> Image.Image:
    """A float field in [0, 1], shape (h, w), as an 8-bit 'L' mask."""
    return Image.fromarray((np.clip(alpha, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "L")


def _paint(canvas: Image.Image, colour, alpha: np.ndarray) -> None:
    """Alpha-blend a flat colour over the canvas, in place; alpha is (h, w) in [0, 1].

    Compositing in PIL (8-bit, in C) rather than in float numpy keeps a 512x384 sample near
    40 ms, which is what lets 2000 samples be written in well under three minutes.
    """
    fill = tuple(int(round(float(c))) for c in colour)
    canvas.paste(fill, (0, 0, *canvas.size), _to_l(alpha))


def _mask(image: Image.Image) -> np.ndarray:
    """A drawn 'L' mask, softened by one box-blur pass, as float32 in [0, 1]."""
    return np.asarray(image.filter(ImageFilter.BoxBlur(1)), np.float32) / 255.0


class _Frame:
    """Maps the canonical disc frame (unit radius, u along the major axis) to image pixels."""

    def __init__(self, cx: float, cy: float, radius: float, aspect: float, angle: float):
        self.cx, self.cy, self.r, self.aspect = cx, cy, radius, aspect
        self.c, self.s = math.cos(angle), math.sin(angle)

    def to_image(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        va = v * self.aspect
        return self.cx + self.r * (u * self.c - va * self.s), self.cy + self.r * (
            u * self.s + va * self.c
        )

    def to_disc(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - self.cx, y - self.cy
        u = (dx * self.c + dy * self.s) / self.r
        v = (-dx * self.s + dy * self.c) / (self.r * self.aspect)
        return u, v


def _vessel_tree(rng: np.random.Generator, start: tuple[float, float], boundary) -> list:
    """Branching chorionic vessels in disc coordinates: a list of (polyline, width, depth)."""
    branches: list[tuple[list[tuple[float, float]], float, int]] = []
    n_trunks = int(rng.integers(4, 7))
    base = rng.uniform(0, 2 * math.pi)
    stack = [
        (start, base + k * 2 * math.pi / n_trunks + rng.normal(0, 0.3), 0.040, 0.42, 0)
        for k in range(n_trunks)
    ]
    while stack:
        (u, v), ang, width, length, depth = stack.pop()
        pts = [(u, v)]
        steps = 6
        for _ in range(steps):
            ang += rng.normal(0, 0.22)
            u, v = u + math.cos(ang) * length / steps, v + math.sin(ang) * length / steps
            rho = math.hypot(u, v)
            if rho > 0.94 * boundary(math.atan2(v, u)):
                break
            pts.append((u, v))
        if len(pts) > 1:
            branches.append((pts, width, depth))
        if depth < 4 and len(pts) == steps + 1:
            for sign in (-1, 1):
                stack.append(
                    (
                        pts[-1],
                        ang + sign * rng.uniform(0.3, 0.8),
                        width * 0.72,
                        length * rng.uniform(0.6, 0.85),
                        depth + 1,
                    )
                )
    return branches


def render_case(case: Case, rng: np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE):
    """Paint the fetal-side photograph of ``case``: a uint8 array of shape (H, W, 3)."""
    w, h = size
    sev = case.severity
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    xx, yy = np.broadcast_to(xs, (h, w)), np.broadcast_to(ys, (h, w))

    # Surgical towel: blue or green cloth with a weave and soft folds.
    towel = np.array(
        [(58, 96, 150), (64, 122, 104), (70, 110, 140)][int(rng.integers(3))], np.float32
    )
    towel *= rng.uniform(0.85, 1.15, 3).astype(np.float32)
    period = rng.uniform(3.0, 6.0)
    weave = np.sin(xs * (2 * math.pi / period)) * np.sin(ys * (2 * math.pi / period))
    folds = _smooth_noise(rng, h, w, 5)
    canvas = Image.fromarray(
        np.clip(towel * (0.8 + 0.35 * folds + 0.05 * weave)[..., None], 0, 255).astype(np.uint8)
    )

    # Disc placement: position, scale and rotation vary from photo to photo.
    radius = rng.uniform(0.30, 0.42) * h
    aspect = case.disc_minor_cm / case.disc_major_cm
    frame = _Frame(
        w / 2 + rng.normal(0, 0.05 * w),
        h / 2 + rng.normal(0, 0.05 * h),
        radius,
        aspect,
        rng.uniform(0, 2 * math.pi),
    )
    harmonics = [(rng.normal(0, 0.025), rng.uniform(0, 2 * math.pi)) for _ in range(2, 6)]

    def boundary(phi):
        return 1.0 + sum(a * np.cos(k * phi + p) for k, (a, p) in enumerate(harmonics, start=2))

    u, v = frame.to_disc(xx, yy)
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    # The outline is smooth in angle, so a 2048-entry table is exact to well under a pixel.
    table_phi = np.linspace(-math.pi, math.pi, 2049, dtype=np.float32)
    table = boundary(table_phi).astype(np.float32)
    bnd = table[((phi + math.pi) * (2048 / (2 * math.pi))).astype(np.int32)]
    edge = 2.0 / radius  # about two pixels of anti-aliasing
    disc = np.clip((bnd - rho) / edge, 0, 1)

    # Membranes: translucent, trailing further on one side; MIR makes them opaque and tan-yellow.
    trail = rng.uniform(-math.pi, math.pi)
    reach = 0.05 + case.membrane_extent * (0.5 + 0.5 * np.cos(phi - trail)) ** 2
    membrane = np.clip((bnd + reach - rho) / (3 * edge), 0, 1) * (1 - disc)
    wrinkle = _smooth_noise(rng, h, w, 24)
    m_alpha = membrane * (0.45 + 0.2 * wrinkle + 0.35 * sev["mir"])
    m_colour = (
        np.array((196, 168, 160), np.float32) * (1 - sev["mir"])
        + np.array((222, 196, 128), np.float32) * sev["mir"]
    )
    _paint(canvas, m_colour, m_alpha)

    # Fetal surface: maroon, mottled, with a bluish-grey sheen of the chorionic plate.
    mottle = _smooth_noise(rng, h, w, 14)
    plate = np.array((122, 36, 50), np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    shade = (0.78 + 0.32 * mottle) * (1.0 - 0.1 * rho * rho)
    sheen = 0.25 * _smooth_noise(rng, h, w, 8)
    # Some healthy plates are paler than others (blood content, time since delivery), so a pale
    # plate alone must not give chorioamnionitis away.
    pale = np.float32(rng.uniform(0.0, 0.3))
    plate_img = (shade * (1 - sheen) * (1 - pale))[..., None] * plate
    plate_img += (sheen * (1 - pale))[..., None] * np.array((150, 128, 152), np.float32)
    plate_img += pale * np.array((205, 185, 180), np.float32)
    plate_pil = Image.fromarray(np.clip(plate_img, 0, 255).astype(np.uint8))
    canvas = Image.composite(plate_pil, canvas, _to_l(disc))

    # Meconium: green-brown staining in patches over membranes and plate, wider when heavier.
    if sev["meconium"] > 0:
        patch = _smooth_noise(rng, h, w, 6)
        cover = np.clip((patch - (0.75 - 0.6 * sev["meconium"])) * 4, 0, 1)
        alpha = cover * (disc + membrane) * (0.25 + 0.45 * sev["meconium"])
        _paint(canvas, (104, 98, 38), alpha)

    # Chorionic vessels from the cord insertion, drawn at full resolution then softened.
    ins_u = case.insertion_rho * math.cos(case.insertion_phi)
    ins_v = case.insertion_rho * math.sin(case.insertion_phi)
    vessel_start = (ins_u, ins_v)
    if case.insertion == "velamentous":
        # Vessels run through the membranes and enter the disc at its margin.
        vessel_start = (0.95 * math.cos(case.insertion_phi), 0.95 * math.sin(case.insertion_phi))
    vessels = Image.new("L", (w, h), 0)
    streaks = Image.new("L", (w, h), 0)
    dv, ds = ImageDraw.Draw(vessels), ImageDraw.Draw(streaks)
    for pts, width, depth in _vessel_tree(rng, vessel_start, lambda p: float(boundary(p))):
        arr = np.asarray(pts, np.float32)
        px, py = frame.to_image(arr[:, 0], arr[:, 1])
        line = list(zip(px.tolist(), py.tolist(), strict=True))
        px_width = max(1, int(round(width * radius)))
        dv.line(line, fill=255, width=px_width, joint="curve")
        if depth <= 3:
            ds.line(line, fill=255, width=max(1, (2 * px_width) // 3))
    _paint(canvas, (70, 16, 46), 0.85 * _mask(vessels) * disc)
    if sev["fir"] > 0:
        # Chorionic vasculitis: pale streaks along the large vessels,
        # with a yellowish perivascular halo where the inflammation spreads into the plate.
        halo = np.asarray(streaks.filter(ImageFilter.BoxBlur(radius * 0.05)), np.float32) / 255.0
        _paint(canvas, (196, 170, 70), np.minimum(1.0, 2.5 * halo) * disc * 0.45 * sev["fir"])
        _paint(canvas, (226, 214, 150), _mask(streaks) * disc * (0.5 + 0.5 * sev["fir"]))

    # Chorioamnionitis: a cloudy, opaque plate that veils the vessels.
    if sev["chorioamnionitis"] > 0:
        cloud = _smooth_noise(rng, h, w, 7)
        alpha = disc * (0.05 + 0.3 * sev["chorioamnionitis"]) * (0.2 + 0.8 * cloud)
        _paint(canvas, (214, 202, 178), alpha)

    # Sepsis: a dusky, congested plate with scattered petechial haemorrhages, both stronger when
    # more severe.
    if sev["sepsis"] > 0:
        _paint(canvas, (72, 14, 40), disc * (0.15 + 0.4 * sev["sepsis"]))
        spots = Image.new("L", (w, h), 0)
        dsp = ImageDraw.Draw(spots)
        for _ in range(int(20 + 90 * sev["sepsis"])):
            r_, a_ = math.sqrt(rng.random()) * 0.9, rng.uniform(0, 2 * math.pi)
            sx, sy = frame.to_image(np.float32(r_ * math.cos(a_)), np.float32(r_ * math.sin(a_)))
            rad = rng.uniform(1.2, 3.0) * radius / 120
            dsp.ellipse([sx - rad, sy - rad, sx + rad, sy + rad], fill=255)
        _paint(canvas, (88, 8, 14), 0.9 * (np.asarray(spots, np.float32) / 255.0) * disc)

    # Umbilical cord: a thick twisted tube from the insertion off towards the image edge.
    cord_w = radius * 0.11 * case.cord_diameter_cm / 1.3
    out_ang = case.insertion_phi + rng.normal(0, 0.6)
    t = np.linspace(0, 1, 40, dtype=np.float32)
    wiggle = 0.15 * np.sin(t * rng.uniform(3, 6) + rng.uniform(0, 6))
    cu = ins_u + t * 1.6 * np.cos(out_ang + wiggle)
    cv = ins_v + t * 1.6 * np.sin(out_ang + wiggle)
    cx_, cy_ = frame.to_image(cu, cv)
    cord_line = list(zip(cx_.tolist(), cy_.tolist(), strict=True))
    cord = Image.new("L", (w, h), 0)
    helix = Image.new("L", (w, h), 0)
    ImageDraw.Draw(cord).line(cord_line, fill=255, width=max(2, int(cord_w)), joint="curve")
    # Helical vessels inside the cord show as a sinuous dark line along it.
    normal = np.stack([-np.gradient(cy_), np.gradient(cx_)], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-6
    offs = 0.3 * cord_w * np.sin(t * 40)
    hx, hy = cx_ + normal[:, 0] * offs, cy_ + normal[:, 1] * offs
    ImageDraw.Draw(helix).line(
        list(zip(hx.tolist(), hy.tolist(), strict=True)), fill=255, width=max(1, int(cord_w / 4))
    )
    c_mask, h_mask = _mask(cord), _mask(helix)
    fir_tint = min(1.0, 0.3 + 0.7 * sev["fir"]) if sev["fir"] > 0 else 0.0
    cord_colour = (
        np.array((206, 196, 192), np.float32) * (1 - fir_tint)
        + np.array((214, 204, 84), np.float32) * fir_tint
    )
    _paint(canvas, cord_colour, c_mask)
    _paint(canvas, (120, 40, 60), 0.6 * h_mask * c_mask)

    # Wet, glossy surface: a few soft specular highlights.
    gloss = Image.new("L", (w, h), 0)
    dg = ImageDraw.Draw(gloss)
    for _ in range(int(rng.integers(1, 4))):
        gx, gy = frame.to_image(
            np.float32(rng.uniform(-0.6, 0.6)), np.float32(rng.uniform(-0.6, 0.6))
        )
        gr = rng.uniform(0.04, 0.12) * radius
        dg.ellipse([gx - gr, gy - gr * 0.6, gx + gr, gy + gr * 0.6], fill=255)
    g_mask = np.asarray(gloss.filter(ImageFilter.GaussianBlur(radius * 0.04)), np.float32) / 255
    _paint(canvas, (250, 250, 250), rng.uniform(0.2, 0.5) * g_mask * disc)

    # Lighting and camera: directional falloff, exposure, white balance, sensor noise.
    light_dir = rng.uniform(0, 2 * math.pi)
    gradient = ((xs - w / 2) * math.cos(light_dir) + (ys - h / 2) * math.sin(light_dir)) / w
    img = np.asarray(canvas, np.float32)
    img = img * (1 + rng.uniform(0.0, 0.5) * gradient)[..., None]
    img *= np.float32(rng.uniform(0.72, 1.2)) * rng.normal(1.0, 0.07, 3).astype(np.float32)
    # Uniform sensor noise of standard deviation sigma: uint8 draws are ten times cheaper than
    # Gaussian ones, and after JPEG the two are indistinguishable.
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    sigma = np.float32(rng.uniform(2, 7))
    img += (noise.astype(np.float32) - 127.5) * (sigma / np.float32(73.9))
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    blur = rng.uniform(0, 1.0)
    if blur > 0.3:
        out = out.filter(ImageFilter.BoxBlur(blur))
    return np.asarray(out)


# --------------------------------------------------------------------------------------------
# Reports


def _grade(s: float) -> str:
    return "mild" if s < 0.4 else "moderate" if s < 0.7 else "severe"


_GRADE_SYNONYMS = {
    "mild": ("mild", "focal", "minimal"),
    "moderate": ("moderate", "patchy", "moderate"),
    "severe": ("severe", "marked", "extensive"),
}


def _stage(s: float) -> int:
    return 1 if s < 0.4 else 2 if s < 0.7 else 3


_POSITIVE = {
    "meconium": (
        "{G} meconium staining of the membranes and chorionic plate, with green-brown discolouration.",
        "The membranes show {g} green-brown meconium pigment.",
        "{G} meconium-laden macrophages in the amnion and chorion.",
        "Green discolouration of the fetal surface consistent with {g} meconium exposure.",
    ),
    "fir": (
        "Fetal inflammatory response, stage {stage}: {g} acute funisitis with yellow cord discolouration.",
        "{G} chorionic vasculitis and umbilical phlebitis, in keeping with a fetal inflammatory response.",
        "Acute funisitis ({g}) with an oedematous umbilical cord and vasculitis of chorionic vessels.",
    ),
    "mir": (
        "Maternal inflammatory response, stage {stage}: {g} acute chorionitis with opaque, tan-yellow membranes.",
        "{G} acute subchorionitis; the free membranes are thickened and opaque.",
        "Neutrophilic infiltration of the chorion laeve ({g}), a maternal inflammatory response.",
    ),
    "chorioamnionitis": (
        "{G} acute chorioamnionitis with a cloudy, opaque chorionic plate.",
        "Histologic chorioamnionitis, {g}, with clouding of the fetal surface.",
        "Dull, opaque chorionic plate consistent with {g} chorioamnionitis.",
    ),
    "sepsis": (
        "Clinical history of neonatal sepsis, blood culture positive; {g} petechial haemorrhages and congestion of the fetal surface.",
        "Neonate with culture-proven early-onset sepsis; {g} petechiae over a dusky, congested chorionic plate.",
        "{G} petechial haemorrhages on a congested fetal surface; the infant was treated for sepsis.",
    ),
}

_NEGATIVE = {
    "meconium": (
        "No meconium staining.",
        "Membranes free of meconium.",
        "No meconium-laden macrophages identified.",
    ),
    "fir": (
        "No funisitis or chorionic vasculitis.",
        "Umbilical cord vessels without inflammation.",
        "No fetal inflammatory response.",
    ),
    "mir": (
        "No maternal inflammatory response.",
        "Chorion laeve without acute inflammation.",
        "Free membranes thin and translucent, without chorionitis.",
    ),
    "chorioamnionitis": (
        "No histologic chorioamnionitis.",
        "The chorionic plate is glistening and transparent, without chorioamnionitis.",
        "No evidence of chorioamnionitis.",
    ),
    "sepsis": (
        "Neonatal course without sepsis; blood cultures negative.",
        "No clinical history of neonatal sepsis.",
        "No petechiae on the fetal surface; no neonatal infection reported.",
    ),
}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def write_report(case: Case, rng: np.random.Generator) -> str:
    """A gross and microscopic report of ``case``: one sentence per finding."""
    sentences = [
        f"The trimmed placental disc measures {case.disc_major_cm:.1f} x "
        f"{case.disc_minor_cm:.1f} x {case.thickness_cm:.1f} cm and weighs {case.weight_g:.0f} g."
    ]
    margin_cm = max(0.0, (1.0 - case.insertion_rho) * case.disc_minor_cm / 2)
    if case.insertion == "velamentous":
        sentences.append("The umbilical cord has a velamentous insertion into the membranes.")
    elif case.insertion == "central":
        sentences.append("The umbilical cord inserts centrally.")
    else:
        sentences.append(
            f"The umbilical cord inserts {case.insertion}ly, {margin_cm:.1f} cm from the nearest margin."
        )
    sentences.append(
        f"The cord measures {case.cord_length_cm:.0f} cm in length and "
        f"{case.cord_diameter_cm:.1f} cm in diameter and contains three vessels."
    )
    findings = []
    for task in TASKS:
        s = case.severity[task]
        if s > 0:
            grade = _pick(rng, _GRADE_SYNONYMS[_grade(s)])
            text = _pick(rng, _POSITIVE[task]).format(
                g=grade, G=grade.capitalize(), stage=_stage(s)
            )
            findings.append(text)
        elif rng.random() < 0.75:
            findings.append(_pick(rng, _NEGATIVE[task]))
    rng.shuffle(findings)
    sentences += findings
    if case.infarct_cm > 0:
        sentences.append(
            f"A peripheral infarct of {case.infarct_cm:.1f} cm on the maternal surface."
        )
    else:
        sentences.append(
            _pick(
                rng,
                (
                    "The maternal surface is intact, with complete cotyledons.",
                    "No infarcts are identified on the maternal surface.",
                ),
            )
        )
    return " ".join(sentences)


def make_sample(seed: int, index: int, size: tuple[int, int] = DEFAULT_SIZE):
    """The case, photograph (uint8 H x W x 3) and report for sample ``index`` of set ``seed``."""
    rng = np.random.default_rng([seed, index, 0x9C])
    case = sample_case(rng)
    image = render_case(case, rng, size)
    report = write_report(case, rng)
    return case, image, report
