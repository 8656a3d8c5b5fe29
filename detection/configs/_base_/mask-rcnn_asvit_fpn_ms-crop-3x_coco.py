# Mask R-CNN FPN 3x on COCO (mmdet's Swin-T recipe: multi-scale + crop, AdamW, 36 epochs) with As-ViT.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py', './asvit.py']

model = dict(backbone={{_base_.asvit_backbone}})
optim_wrapper = {{_base_.asvit_optim_wrapper}}
