/** The error classes a caller may catch (`instanceof`), exported by every entry point: the engine's and the browser client's. */
export {
  AbortError,
  AdapterError,
  CapabilityError,
  ConfigError,
  ContractError,
  InternalError,
  ModelFormatError,
  NetworkError,
  QuotaError,
  QwenError,
  RequestError,
  SessionError,
  StageError,
  StorageError,
  TemplateError,
} from '../errors.ts';
