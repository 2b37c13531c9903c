"""HTTP inputs. Each turns a vendor's request into canonical `Event`s and hands them to the pipeline."""
