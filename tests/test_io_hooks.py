"""The NIfTI reader, writers and sample data in a real napari viewer (Xvfb), and through npe2."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from laugen_napari.ui import io_hooks
from laugen_napari.ui.layers import LAUGEN_VOLUME

# the contributions this module provides, as handed to napari.yaml (used when the package's
# manifest does not declare them yet)
MANIFEST = """
name: laugen-napari
display_name: LAUGEN
contributions:
  commands:
    - id: laugen-napari.get_reader
      python_name: laugen_napari.ui.io_hooks:get_reader
      title: Open NIfTI (.nii, .nii.gz) with LAUGEN
    - id: laugen-napari.write_image
      python_name: laugen_napari.ui.io_hooks:write_image
      title: Save an image layer as NIfTI in its original geometry
    - id: laugen-napari.write_labels
      python_name: laugen_napari.ui.io_hooks:write_labels
      title: Save a labels layer as NIfTI in its original geometry
    - id: laugen-napari.sample_data
      python_name: laugen_napari.ui.io_hooks:make_sample_data
      title: MNI152 T1 and lateral ventricles
    - id: laugen-napari.export_widget
      python_name: laugen_napari.ui.export_widget:ExportWidget
      title: LAUGEN export
  readers:
    - command: laugen-napari.get_reader
      filename_patterns: ["*.nii", "*.nii.gz"]
      accepts_directories: false
  writers:
    - command: laugen-napari.write_image
      layer_types: ["image"]
      filename_extensions: [".nii.gz", ".nii"]
      display_name: NIfTI (original geometry)
    - command: laugen-napari.write_labels
      layer_types: ["labels"]
      filename_extensions: [".nii.gz", ".nii"]
      display_name: NIfTI labels (original geometry)
  sample_data:
    - command: laugen-napari.sample_data
      key: mni152
      display_name: MNI152 T1 + lateral ventricles
  widgets:
    - command: laugen-napari.export_widget
      display_name: LAUGEN export
"""

LPS_SPACING = (0.8, 0.9, 2.5)  # file axes i, j, k
LPS_SHAPE = (20, 24, 9)


def lps_affine(spacing=LPS_SPACING, origin=(30.0, 40.0, -12.0)) -> np.ndarray:
    """Oblique-free LPS: i runs to the left (-x), j to the back (-y), k up (+z)."""
    return np.array([[-spacing[0], 0, 0, origin[0]], [0, -spacing[1], 0, origin[1]],
                     [0, 0, spacing[2], origin[2]], [0, 0, 0, 1]], dtype=np.float64)


def _save(path: Path, data: np.ndarray, affine: np.ndarray, dtype, zooms=None) -> Path:
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header.set_data_dtype(dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    if zooms is not None:
        img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path


@pytest.fixture
def lps_pair(tmp_path):
    """An int16 image and a uint8 label map (labels 0..4) in LPS orientation, anisotropic voxels."""
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 2000, LPS_SHAPE).astype(np.int16)
    i, j, k = np.indices(LPS_SHAPE)
    labels = np.zeros(LPS_SHAPE, np.uint8)
    labels[(i - 8) ** 2 + (j - 10) ** 2 < 20] = 1
    labels[(i > 13) & (j > 15)] = 2
    labels[(k == 2) & (i < 5)] = 3
    labels[(k == 7) & (j < 4)] = 4
    affine = lps_affine()
    return (_save(tmp_path / "lps_t1.nii.gz", image, affine, np.int16), image,
            _save(tmp_path / "lps_roi.nii.gz", labels, affine, np.uint8), labels, affine)


def _add(viewer, layer_data):
    from napari.layers import Layer

    return [viewer.add_layer(Layer.create(*ld)) for ld in layer_data]


def _expected_translate(affine: np.ndarray, shape) -> tuple[float, float, float]:
    """World (z, y, x) of the closest-RAS array's voxel 0, worked out by hand for an LPS/RAS file:
    the first voxel is the file's last along every flipped axis."""
    ijk = [shape[a] - 1 if affine[a, a] < 0 else 0 for a in range(3)]
    xyz = affine @ np.array(ijk + [1.0])
    return tuple(xyz[:3][::-1])


def test_sample_opens_as_image_and_labels_at_1mm(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = _add(viewer, io_hooks.make_sample_data())
    image, labels = layers
    assert type(image).__name__ == "Image" and type(labels).__name__ == "Labels"
    ref = nib.load(str(io_hooks.sample_data_dir() / io_hooks.SAMPLE_IMAGE))
    assert image.data.shape == ref.shape[::-1] == labels.data.shape
    np.testing.assert_allclose(image.scale, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(labels.scale, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(image.translate, _expected_translate(ref.affine, ref.shape))
    np.testing.assert_allclose(image.translate, (-72.0, -134.0, -98.0))
    np.testing.assert_allclose(labels.translate, image.translate)
    assert set(np.unique(labels.data)) == {0, 1, 2}
    np.testing.assert_array_equal(image.metadata[LAUGEN_VOLUME].file_affine, ref.affine)
    # the image is uint8 with 225 grey values: the reader must still open it as an Image
    assert io_hooks.get_reader(str(io_hooks.sample_data_dir() / io_hooks.SAMPLE_IMAGE))(
        str(io_hooks.sample_data_dir() / io_hooks.SAMPLE_IMAGE))[0][2] == "image"


def test_reader_kinds_and_names(tmp_path):
    assert io_hooks.get_reader(str(tmp_path / "x.tif")) is None
    assert io_hooks.get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.png")]) is None
    assert io_hooks.get_reader(str(tmp_path / "a.NII.GZ")) is not None
    assert io_hooks.name_says_labels("sub-01_dseg.nii.gz") and io_hooks.name_says_labels("brain_mask.nii")
    assert io_hooks.name_says_labels("case_gt.nii.gz") and io_hooks.name_says_labels("aseg.nii")
    assert not io_hooks.name_says_labels("length.nii") and not io_hooks.name_says_labels("T1w.nii.gz")
    aff = np.eye(4)
    smooth = np.linspace(0, 400, 10 * 10 * 10).reshape(10, 10, 10)
    few = (smooth // 100).astype(np.int32)  # 5 values
    _save(tmp_path / "float_img.nii", smooth, aff, np.float32)
    _save(tmp_path / "int_few.nii", few, aff, np.int32)
    _save(tmp_path / "float_mask.nii", few, aff, np.float32)  # integer values in a float file, named mask
    _save(tmp_path / "prob_mask.nii", smooth / 400, aff, np.float32)  # named mask but fractional: an image
    kinds = {p: io_hooks.read_nifti(str(tmp_path / p))[0] for p in ("float_img.nii", "int_few.nii", "float_mask.nii",
                                                                     "prob_mask.nii")}
    assert kinds["float_img.nii"][2] == "image"
    assert kinds["int_few.nii"][2] == "labels"
    assert kinds["float_mask.nii"][2] == "labels" and kinds["float_mask.nii"][0].dtype.kind in "ui"
    assert kinds["prob_mask.nii"][2] == "image"


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_read_write_read_keeps_data_and_affine(make_napari_viewer, tmp_path, lps_pair, orientation):
    img_path, image, lab_path, labels, affine = lps_pair
    if orientation == "RAS":
        affine = np.diag([1.2, 1.0, 3.0, 1.0])
        affine[:3, 3] = (-10.0, 5.5, 20.0)
        img_path = _save(tmp_path / "ras_t1.nii.gz", image, affine, np.int16)
        lab_path = _save(tmp_path / "ras_roi.nii", labels, affine, np.uint8)
    assert "".join(nib.aff2axcodes(affine)) == orientation
    viewer = make_napari_viewer()
    read = io_hooks.get_reader(str(img_path))([str(img_path), str(lab_path)])
    img_layer, lab_layer = _add(viewer, read)
    assert type(img_layer).__name__ == "Image" and type(lab_layer).__name__ == "Labels"
    zooms = np.abs(np.diag(affine)[:3])
    np.testing.assert_allclose(img_layer.scale, zooms[::-1])
    np.testing.assert_allclose(img_layer.translate, _expected_translate(affine, LPS_SHAPE))
    np.testing.assert_allclose(lab_layer.translate, img_layer.translate)
    # a world point: the file voxel (3, 5, 7) lies where napari shows it
    world_xyz = (affine @ [3, 5, 7, 1])[:3]
    data_idx = np.round(img_layer.world_to_data(world_xyz[::-1])).astype(int)
    assert img_layer.data[tuple(data_idx)] == image[3, 5, 7]
    assert lab_layer.data[tuple(data_idx)] == labels[3, 5, 7]

    (tmp_path / "out").mkdir()
    out_img = io_hooks.write_image(str(tmp_path / "out" / "img.nii.gz"), *img_layer.as_layer_data_tuple()[:2])
    out_lab = io_hooks.write_labels(str(tmp_path / "out" / "lab"), *lab_layer.as_layer_data_tuple()[:2])
    assert out_lab == [str(tmp_path / "out" / "lab.nii.gz")]
    for (out,), orig, src_path in ((out_img, image, img_path), (out_lab, labels, lab_path)):
        back = nib.load(out)
        src = nib.load(str(src_path))
        np.testing.assert_array_equal(back.affine, src.affine)
        np.testing.assert_array_equal(back.get_qform(), src.get_qform())
        np.testing.assert_array_equal(back.get_sform(), src.get_sform())
        assert int(back.header["sform_code"]) == 2 and int(back.header["qform_code"]) == 1
        assert back.get_data_dtype() == src.get_data_dtype()
        assert back.header.get_zooms() == src.header.get_zooms()
        np.testing.assert_array_equal(np.asarray(back.dataobj), orig)
        # and reading the written file gives the same layer again
        again = io_hooks.read_nifti(out)[0]
        layer = img_layer if orig is image else lab_layer
        np.testing.assert_array_equal(again[0], layer.data)
        np.testing.assert_allclose(again[1]["scale"], layer.scale)
        np.testing.assert_allclose(again[1]["translate"], layer.translate)
        assert again[2] == ("image" if orig is image else "labels")


def test_4d_opens_time_first_and_round_trips(make_napari_viewer, tmp_path):
    shape = (10, 12, 6, 4)
    rng = np.random.default_rng(1)
    data = rng.normal(size=shape).astype(np.float32)
    affine = lps_affine()
    path = _save(tmp_path / "bold.nii.gz", data, affine, np.float32, zooms=LPS_SPACING + (2.0,))
    viewer = make_napari_viewer()
    (layer,) = _add(viewer, io_hooks.read_nifti(str(path)))
    assert layer.data.shape == (4, 6, 12, 10)
    np.testing.assert_allclose(layer.scale, (1.0, 2.5, 0.9, 0.8))
    np.testing.assert_allclose(layer.translate[1:], _expected_translate(affine, shape))
    assert layer.translate[0] == 0
    # LPS -> RAS flips i and j: file [i, j, k, t] is layer [t, k, J-1-j, I-1-i]
    for i, j, k, t in [(0, 0, 0, 0), (3, 7, 2, 1), (9, 11, 5, 3)]:
        assert layer.data[t, k, shape[1] - 1 - j, shape[0] - 1 - i] == data[i, j, k, t]
    (out,) = io_hooks.write_image(str(tmp_path / "bold_out.nii.gz"), *layer.as_layer_data_tuple()[:2])
    back = nib.load(out)
    np.testing.assert_array_equal(back.affine, nib.load(str(path)).affine)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)
    assert back.header.get_zooms() == pytest.approx(LPS_SPACING + (2.0,))


def test_labels_drawn_from_scratch_take_the_image_geometry(make_napari_viewer, tmp_path, lps_pair):
    img_path, image, _, _, affine = lps_pair
    viewer = make_napari_viewer()
    (img_layer,) = _add(viewer, io_hooks.read_nifti(str(img_path)))
    viewer.layers.selection.active = img_layer
    viewer._new_labels()  # napari's "new labels layer" button
    drawn = viewer.layers[-1]
    assert type(drawn).__name__ == "Labels" and LAUGEN_VOLUME not in drawn.metadata
    world_xyz = (affine @ [4, 6, 8, 1])[:3]
    idx = tuple(np.round(drawn.world_to_data(world_xyz[::-1])).astype(int))
    drawn.data[idx] = 3
    (out,) = io_hooks.write_labels(str(tmp_path / "drawn.nii.gz"), *drawn.as_layer_data_tuple()[:2])
    back = nib.load(out)
    np.testing.assert_array_equal(back.affine, nib.load(str(img_path)).affine)
    assert back.shape == image.shape
    arr = np.asarray(back.dataobj)
    assert arr[4, 6, 8] == 3 and int((arr != 0).sum()) == 1

    # with no layer of that geometry left, the layer's own scale/translate still put the voxel at
    # the same world position (a RAS file)
    viewer.layers.remove(img_layer)
    (out2,) = io_hooks.write_labels(str(tmp_path / "drawn_alone.nii.gz"), *drawn.as_layer_data_tuple()[:2])
    alone = nib.load(out2)
    assert "".join(nib.aff2axcodes(alone.affine)) == "RAS"
    ijk = np.argwhere(np.asarray(alone.dataobj) == 3)[0]
    np.testing.assert_allclose((alone.affine @ np.r_[ijk, 1])[:3], world_xyz, atol=1e-4)


@pytest.fixture
def laugen_plugin(npe2pm, tmp_path):
    """The plugin registered in a clean npe2 plugin manager: the package's napari.yaml when it
    declares these hooks, else the contributions above."""
    from npe2 import PluginManifest

    import laugen_napari

    shipped = Path(laugen_napari.__file__).parent / "napari.yaml"
    if shipped.is_file() and "laugen-napari.get_reader" in shipped.read_text():
        manifest = PluginManifest.from_file(shipped)
    else:
        (tmp_path / "napari.yaml").write_text(MANIFEST)
        manifest = PluginManifest.from_file(tmp_path / "napari.yaml")
    npe2pm.register(manifest)
    return npe2pm


def test_through_npe2_open_save_and_sample(make_napari_viewer, laugen_plugin, tmp_path, lps_pair):
    img_path, image, lab_path, labels, affine = lps_pair
    viewer = make_napari_viewer()
    viewer.open([str(img_path), str(lab_path)], plugin="laugen-napari", stack=False)
    assert [type(lay).__name__ for lay in viewer.layers] == ["Image", "Labels"]
    viewer.layers.selection = {viewer.layers[1]}
    viewer.layers.save(str(tmp_path / "saved_roi.nii.gz"), selected=True, plugin="laugen-napari")
    back = nib.load(str(tmp_path / "saved_roi.nii.gz"))
    np.testing.assert_array_equal(back.affine, nib.load(str(img_path)).affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels)
    viewer.open_sample("laugen-napari", "mni152")
    assert [type(lay).__name__ for lay in viewer.layers[2:]] == ["Image", "Labels"]
    np.testing.assert_allclose(viewer.layers[-1].scale, (1.0, 1.0, 1.0))
