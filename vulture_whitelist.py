"""What vulture (``make test``: ``vulture src vulture_whitelist.py --min-confidence 60``) reports as unused but is
used, each name reviewed. Anything else it reports is dead code, to be removed rather than listed here."""

# ruff: noqa: B018, F821
# Framework hooks: Lightning calls these on the task and its callbacks, torch calls extra_repr for print(module),
# the import system calls a loader's create_module / exec_module, a context manager's __exit__ gets exc.
_.on_train_start
_.on_train_epoch_start
_.on_train_epoch_end
_.on_train_batch_end
_.on_save_checkpoint
_.on_load_checkpoint
_.on_fit_start
_.on_exception
_.configure_optimizers
_.training_step
_.disable  # tqdm-like progress bar interface Lightning calls
_.enable
_.outputs  # a Lightning hook's argument
_.exception  # a Lightning hook's argument
_.exc  # __exit__(*exc)
_.extra_repr
_.create_module
_.exec_module

# Public API: attributes and methods users read, documented and tested (tests/ is not scanned)
_.num_edges  # GraphBatch.num_edges
_.from_module  # Backbone.from_module (docs/api/backbones.md)
_.first_conv  # the encoders' first convolution (the input adapter of fine-tuning)
_.classify  # EfficientNetLite0.classify: ImageNet logits
_.stem_type  # ResNet's stem ("cifar" / "imagenet"), recorded with the model
_.singular_values  # Spectrum.singular_values
_.log_e_hcol  # Lemma1Check fields
_.log_e_hscl
_.num_anchors
_.num_empty_hcol
_.num_empty_hscl
_.reset_memory  # ContrastiveLoss.reset_memory: empties the memory of negatives (public)
_.num_negatives  # LossStats fields and properties (public statistics of a loss call)
_.num_valid_anchors
_.num_fallbacks
_.reference  # Method.reference: the paper a registry entry cites
_.choose  # AutoExponential.choose: solve and read the solution in one call (public; the loss uses solve / accept)
