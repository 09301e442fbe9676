"""UCF101 (middle frames): 101 actions, one JPEG per video.

Split: ``split_zhou_UCF101.json``; otherwise ``ucfTrainTestlist/trainlist01.txt`` is split 80/20 per
class into train/val and ``testlist01.txt`` is the test set. ``classInd.txt`` lines are
``<1-based id> <Action>``; list lines are ``<Action>/<video>.avi [<id>]``. The action is split at
capital letters and joined with "_" ("ApplyEyeMakeup" -> "Apply_Eye_Makeup"), and the image is
``UCF-101-midframes/<Apply_Eye_Makeup>/<video>.jpg``.
"""
import os.path as osp
import re

from vlprompt.data.datasets import DATASET_REGISTRY, split_trainval

from .common import AnnotationError, SplitDataset, make_datum, read_lines


def split_camel_case(action):
    """'ApplyEyeMakeup' -> 'Apply_Eye_Makeup', 'YoYo' -> 'Yo_Yo'."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


@DATASET_REGISTRY.register()
class UCF101(SplitDataset):
    dataset_dir = "ucf101"
    catalog_name = "UCF101"

    def build_split(self):
        class_file = osp.join(self.dataset_dir, "ucfTrainTestlist", "classInd.txt")
        cname2lab = {}
        for lineno, line in read_lines(class_file):
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) < 1:
                raise AnnotationError(class_file, lineno, '"<class id from 1> <ActionName>"', line)
            cname2lab[parts[1]] = int(parts[0]) - 1
        trainval = self.read_data(cname2lab, "ucfTrainTestlist/trainlist01.txt")
        test = self.read_data(cname2lab, "ucfTrainTestlist/testlist01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, cname2lab, text_file):
        text_file = osp.join(self.dataset_dir, text_file)
        items = []
        for lineno, line in read_lines(text_file):
            video = line.split()[0]
            parts = video.split("/")
            if len(parts) != 2 or parts[0] not in cname2lab:
                raise AnnotationError(
                    text_file, lineno, '"<ActionName>/<video>.avi" with an action from classInd.txt', line
                )
            action, filename = parts
            renamed_action = split_camel_case(action)
            filename = filename.replace(".avi", ".jpg")
            impath = osp.join(self.image_dir, renamed_action, filename)
            items.append(make_datum(impath, cname2lab[action], renamed_action, text_file, lineno))
        return items
