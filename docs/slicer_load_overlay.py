"""Load a medanomaly CT with its whole-scan anomaly map, the candidates and the nodule markers in 3D Slicer.

One call: paste into Slicer's Python console (View → Python Console) after setting RUN and SERIES,
or run
    Slicer --python-script docs/slicer_load_overlay.py -- RUN_DIR SERIES
where SERIES is the file stem of the series in RUN_DIR/volumes (its SeriesInstanceUID, or
``series-<hash>`` for a UID that is not a DICOM UID).

What is shown:
- background: the CT (lung window);
- foreground: the anomaly p-value map (``<series>_anomaly_p.nii.gz``), displayed only where
  p < 0.05 (the window score is unusual for normal lung at the 5% level), hot colours = small p;
- the voxel-wise map (``<series>_anomaly.nii.gz``) is loaded too, to switch to in the slice views;
- the candidates (``<series>_candidates.mrk.json``) as a point list, labelled by rank;
- the annotated nodule centres, when the run had a nodule table, as a segmentation.
"""

import sys

import slicer

RUN, SERIES = (sys.argv[-2], sys.argv[-1]) if len(sys.argv) >= 3 else ("runs/ct_nodules", "<series>")
P_THRESHOLD = 0.05


def load_run(run: str, series: str, p_threshold: float = P_THRESHOLD):
    """Load the CT, both maps, the candidates and the nodule markers of one series; returns the nodes."""
    ct = slicer.util.loadVolume(f"{run}/volumes/{series}.nii.gz")
    voxel_map = slicer.util.loadVolume(f"{run}/overlays/{series}_anomaly.nii.gz")
    voxel_map.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
    pmap = slicer.util.loadVolume(f"{run}/overlays/{series}_anomaly_p.nii.gz")
    display = pmap.GetDisplayNode()
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeInvertedGrey")
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, p_threshold)
    display.SetApplyThreshold(True)  # only voxels with p in [0, p_threshold] are drawn
    display.SetLowerThreshold(0.0)
    display.SetUpperThreshold(p_threshold)
    slicer.util.setSliceViewerLayers(background=ct, foreground=pmap, foregroundOpacity=0.5)
    candidates = slicer.util.loadMarkups(f"{run}/overlays/{series}_candidates.mrk.json")
    try:  # nodule centres as a segmentation (outlined in every view)
        nodules = slicer.util.loadLabelVolume(f"{run}/overlays/{series}_nodules.nii.gz")
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nodule centres")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(nodules, seg)
        slicer.mrmlScene.RemoveNode(nodules)
    except Exception as exc:  # noqa: BLE001 - no nodule table in this run
        print(f"no nodule markers loaded: {exc}")
    ct.GetDisplayNode().SetAutoWindowLevel(False)
    ct.GetDisplayNode().SetWindowLevel(1500, -600)  # lung window
    slicer.util.resetSliceViews()
    return ct, voxel_map, pmap, candidates


load_run(RUN, SERIES)
