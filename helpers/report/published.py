"""The numbers this project did not measure: the study it reproduces and published anchors, each with
its source. Every table or statement that shows one of them cites it from here."""
from __future__ import annotations

# The study this project reproduces: its reported numbers, never ours. Cite it by its title
# wherever one of its numbers appears.
STUDY_TITLE = "Image Completion: DDPM vs. Stable Diffusion"


STUDY_AUTHORS = "Nguyễn Thị Thanh Huyền, Nguyễn Thị Minh Ly, Đặng Minh Nguyệt"


STUDY_SUPERVISORS = "PGS.TS. Nguyễn Việt Hà and ThS. Nguyễn Thị Thùy Linh"


STUDY_CITATION = (f"“{STUDY_TITLE}” ({STUDY_AUTHORS}; supervised by {STUDY_SUPERVISORS}), "
                  "a student project")


STUDY_SOURCE = f"the study “{STUDY_TITLE}”"


STUDY_PROTOCOL = "the study's CelebA-HQ 256 test split and masks (its own protocol; not re-run here)"


STUDY = [  # "id": our method that the row stands beside
    {"id": "sd_lora", "method": "SD 1.5 inpainting + LoRA", "psnr": 23.45, "ssim": 0.845, "lpips": 0.112, "fid": 32.17},
    {"id": "ddpm_finetuned", "method": "DDPM fine-tuned", "psnr": 20.97, "ssim": 0.801, "lpips": 0.1625, "fid": 40.45},
]
# Their SSIM window is not stated (Wang et al.'s usual 11x11 Gaussian?); ours is a 7x7 uniform window:
# the two SSIM columns are not on one scale (helpers.report.text.study_note says so under the table).


# Published anchors on CelebA-HQ 256: each entry names the paper (and its table) where its numbers
# are printed, with that paper's protocol and number of test images, e.g.
#   {"method": "RePaint (wide masks)", "short_source": "RePaint paper",
#    "source": "Lugmayr et al., RePaint: ..., CVPR 2022 (arXiv:2201.09865), Table 1", "protocol": ...,
#    "n_images": 100, "lpips": ...}
# None is listed yet: the LaMa, RePaint and DeepFill v2 numbers quoted earlier could not be found in
# the papers' text from here, and a number is shown only once its source has been checked.
ANCHORS: list[dict] = []


def anchor_sources() -> str:
    """The full reference of every anchor, as markdown bullets."""
    return "\n".join(f"* {a['method']}: {a['source']}." for a in ANCHORS)


def sources() -> str:
    """The footnote slide: the study and the papers every quoted number comes from."""
    return "\n".join([f"* The study: {STUDY_CITATION}; its numbers are those of its own report.",
                       anchor_sources()])

